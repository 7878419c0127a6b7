"""Sort-of-CLEVR (Santoro et al. 2017, "A simple neural network module for relational
reasoning"), as text VQA for chat-style multimodal models.

Follows the public generator (kimhc6028/relational-networks, sort_of_clevr_generator.py):
75x75 images, six objects (one per colour), each a circle or square, ten
non-relational and ten relational questions per image. Differences, on purpose:

- Overlap test: the original rejects a centre when the Euclidean distance to an earlier
  one is < 2*size, which lets two squares overlap at the corners (e.g. dx = dy = 8).
  Here a centre is rejected when max(|dx|, |dy|) <= 2*size, so no two objects' bounding
  boxes share a pixel.
- Questions and answers are strings, not one-hot vectors.
- `count` counts the object itself ("1".."6"); ties in closest/furthest go to the
  earlier colour in `COLORS` (the original's argmin/argmax does the same).

Optionally (`shards=True`) each split is also written as webdataset image-caption shards like
the Shapes world's (`shards/{split}-NNNNNN.tar` holding `key.png`, `key.txt`, `key.json`) for the
contrastive `clip` stage. The caption lists every object, in `COLORS` order, with its colour,
shape and coarse position, the same halves the non-relational questions ask about, e.g.
"red circle top left, green square bottom right, ...". Captions use no randomness, so the
images and questions are identical with and without shards.

Rendering styles (`RenderStyle`, named in `STYLES`): the same scene can be drawn with a
smaller object (half-size 4 instead of 5), antialiased edges (each pixel the area average of
4x4 point samples, so edge pixels blend with the white background) and per-pixel Gaussian
colour noise. `paper` is the rendering above, pixel for pixel; the others are held-out
renderings for testing whether a model that knows shapes still counts them. With `augment`,
every training image gets its own style drawn by `sample_style`. Rendering randomness (the
augmented styles and the noise) comes from its own streams (`render-train`, `render-val`), so
scenes, questions, answers and the tokenizer are identical whatever the styles: only pixels change.
Hard edges sample each pixel at its centre (a circle of radius 5 covers 81 pixels, a square
11x11 = 121); antialiased edges average the same continuous shapes, whose areas are pi*r^2 and
(2r)^2, a ratio of pi/4.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.tokenizer import train_tokenizer
from data.writers import (
    QA,
    caption_record,
    check_positive,
    image_relpath,
    llava_record,
    qa_rows,
    qa_texts,
    record_id,
    save_png,
    stream_rng,
    write_json,
    write_jsonl,
    write_shards,
)

__all__ = [
    "COLORS",
    "IMAGE_SIZE",
    "NON_RELATIONAL",
    "OBJECT_SIZE",
    "QA",
    "QUESTION_TYPES",
    "RELATIONAL",
    "SHAPES",
    "STYLES",
    "Obj",
    "RenderStyle",
    "Scene",
    "answer",
    "ask",
    "caption",
    "coverage",
    "render",
    "sample_scene",
    "sample_style",
    "scene_json",
    "style_named",
    "write_sort_of_clevr",
]

IMAGE_SIZE = 75
OBJECT_SIZE = 5  # half-size in pixels (the original's `size`)
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "orange": (255, 156, 0),
    "gray": (128, 128, 128),
    "yellow": (255, 255, 0),
}
SHAPES = ("circle", "square")
NON_RELATIONAL = ("shape", "horizontal", "vertical")
RELATIONAL = ("closest", "furthest", "count")
QUESTION_TYPES = NON_RELATIONAL + RELATIONAL

TEMPLATES = {
    "shape": "What is the shape of the {c} object?",
    "horizontal": "Is the {c} object on the left or right of the image?",
    "vertical": "Is the {c} object on the top or bottom of the image?",
    "closest": "What is the shape of the object closest to the {c} object?",
    "furthest": "What is the shape of the object furthest from the {c} object?",
    "count": "How many objects have the same shape as the {c} object?",
}

SUPERSAMPLE = 4  # antialiased edges: SUPERSAMPLE x SUPERSAMPLE point samples per pixel, averaged


@dataclass(frozen=True)
class RenderStyle:
    """How a scene becomes pixels; scenes and answers never depend on it.

    `object_size` is the drawn half-size (4 or 5: the overlap rule at 2 * OBJECT_SIZE then keeps
    every object's pixels apart); `antialias` area-averages the edges; `color_noise` is the std
    of per-pixel, per-channel Gaussian noise in 0..255 units (rounded, clipped to uint8).
    """

    object_size: int = OBJECT_SIZE
    antialias: bool = False
    color_noise: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.object_size, bool) or self.object_size not in (4, 5):
            raise ValueError(f"object_size must be 4 or 5, got {self.object_size!r}")
        if not isinstance(self.antialias, bool):
            raise ValueError(f"antialias must be true or false, got {self.antialias!r}")
        if isinstance(self.color_noise, bool) or not isinstance(self.color_noise, (int, float)) or not (
            0.0 <= self.color_noise <= 255.0
        ):
            raise ValueError(f"color_noise must be a number in [0, 255], got {self.color_noise!r}")

    def to_json(self) -> dict:
        return {"object_size": self.object_size, "antialias": self.antialias, "color_noise": float(self.color_noise)}


STYLES: dict[str, RenderStyle] = {
    "paper": RenderStyle(),  # the generator's rendering: size 5, hard edges, no noise
    "soft": RenderStyle(object_size=4, antialias=True, color_noise=6.0),
    "small": RenderStyle(object_size=4),
    "antialiased": RenderStyle(antialias=True),
    "noisy": RenderStyle(color_noise=6.0),
}
AUGMENT = {"object_size": [4, 5], "antialias": [False, True], "color_noise": [0.0, 8.0]}  # sample_style's ranges


def style_named(name: str, arg: str = "style") -> RenderStyle:
    """The named style; an unknown name is an error naming `arg`, the value and the choices."""
    if not isinstance(name, str) or name not in STYLES:
        raise ValueError(f"{arg} must be one of {', '.join(STYLES)}; got {name!r}")
    return STYLES[name]


def sample_style(rng: np.random.Generator) -> RenderStyle:
    """An augmented training image's style: size and antialiasing each a coin flip, noise std
    uniform in AUGMENT["color_noise"]."""
    size = AUGMENT["object_size"][int(rng.integers(2))]
    antialias = AUGMENT["antialias"][int(rng.integers(2))]
    low, high = AUGMENT["color_noise"]
    return RenderStyle(object_size=size, antialias=antialias, color_noise=float(rng.uniform(low, high)))


@dataclass(frozen=True)
class Obj:
    """One object; (cx, cy) is the centre pixel, x = column, y = row (grows downward)."""

    color: str
    shape: str
    cx: int
    cy: int


@dataclass(frozen=True)
class Scene:
    """Six objects, one per colour, in `COLORS` order."""

    objects: tuple[Obj, ...]

    def get(self, color: str) -> Obj:
        for obj in self.objects:
            if obj.color == color:
                return obj
        raise ValueError(f"color must be one of {[o.color for o in self.objects]}, got {color!r}")


def sample_scene(rng: np.random.Generator) -> Scene:
    """Rejection-sample non-overlapping centres in [size, image_size - size) and shapes."""
    objects: list[Obj] = []
    for color in COLORS:
        while True:
            cx, cy = (int(v) for v in rng.integers(OBJECT_SIZE, IMAGE_SIZE - OBJECT_SIZE, size=2))
            if all(max(abs(cx - o.cx), abs(cy - o.cy)) > 2 * OBJECT_SIZE for o in objects):
                break
        shape = SHAPES[0] if rng.random() < 0.5 else SHAPES[1]
        objects.append(Obj(color, shape, cx, cy))
    return Scene(tuple(objects))


def coverage(shape: str, style: RenderStyle) -> np.ndarray:
    """Fraction of each pixel of the (2s+1, 2s+1) box around a centre covered by the shape
    (s = style.object_size): a circle of radius s or a square of half-side s, sampled at the
    pixel centres (hard edges: 0 or 1) or averaged over SUPERSAMPLE^2 points (antialiased)."""
    s = style.object_size
    k = SUPERSAMPLE if style.antialias else 1
    offsets = (np.arange(k) + 0.5) / k - 0.5  # hard edges: the pixel centre only
    d = (np.arange(-s, s + 1)[:, None] + offsets[None, :]).reshape(-1)
    dy, dx = d[:, None], d[None, :]
    if shape == "circle":
        inside = dx * dx + dy * dy <= s * s
    elif shape == "square":
        inside = (np.abs(dx) <= s) & (np.abs(dy) <= s)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    n = 2 * s + 1
    return inside.reshape(n, k, n, k).mean(axis=(1, 3))


def render(scene: Scene, style: RenderStyle = STYLES["paper"], rng: np.random.Generator | None = None) -> np.ndarray:
    """Draw the scene on white in `style`: (75, 75, 3) uint8. `rng` draws the colour noise
    (required when style.color_noise > 0; nothing is drawn otherwise)."""
    img = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 255.0)
    s = style.object_size
    for o in scene.objects:
        y0, x0 = max(o.cy - s, 0), max(o.cx - s, 0)  # a hand-placed object may leave the image: draw what is inside
        alpha = coverage(o.shape, style)[y0 - (o.cy - s) :, x0 - (o.cx - s) :][: IMAGE_SIZE - y0, : IMAGE_SIZE - x0, None]
        box = img[y0 : y0 + alpha.shape[0], x0 : x0 + alpha.shape[1]]
        box[...] = box * (1.0 - alpha) + np.asarray(COLORS[o.color], dtype=float) * alpha
    if style.color_noise > 0:
        if rng is None:
            raise ValueError("render needs an rng for a style with color_noise > 0")
        img += rng.normal(0.0, style.color_noise, size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def answer(scene: Scene, color: str, qtype: str) -> str:
    """Ground-truth answer for the question of type `qtype` about the `color` object."""
    me = scene.get(color)
    if qtype == "shape":
        return me.shape
    if qtype == "horizontal":
        return "left" if me.cx < IMAGE_SIZE / 2 else "right"
    if qtype == "vertical":
        return "top" if me.cy < IMAGE_SIZE / 2 else "bottom"
    if qtype in ("closest", "furthest"):
        others = [o for o in scene.objects if o is not me]
        dist = [(o.cx - me.cx) ** 2 + (o.cy - me.cy) ** 2 for o in others]
        pick = min if qtype == "closest" else max
        return others[dist.index(pick(dist))].shape  # list.index: first (earliest colour) on ties
    if qtype == "count":
        return str(sum(o.shape == me.shape for o in scene.objects))
    raise ValueError(f"unknown question type {qtype!r}; expected one of {QUESTION_TYPES}")


def caption(scene: Scene) -> str:
    """Every object in `COLORS` order: "red circle top left, green square bottom right, ...".

    Positions are the halves the non-relational questions use (`answer`'s vertical, horizontal).
    """
    return ", ".join(
        f"{o.color} {o.shape} {answer(scene, o.color, 'vertical')} {answer(scene, o.color, 'horizontal')}"
        for o in scene.objects
    )


def scene_json(scene: Scene) -> dict:
    """The scene's objects (centre pixel and the caption's coarse position) as JSON."""
    return {
        "objects": [
            {
                "color": o.color,
                "shape": o.shape,
                "cx": o.cx,
                "cy": o.cy,
                "vertical": answer(scene, o.color, "vertical"),
                "horizontal": answer(scene, o.color, "horizontal"),
            }
            for o in scene.objects
        ]
    }


def _shard_sample(key: str, png: bytes, scene: Scene) -> dict:
    return {"__key__": key, "png": png, "txt": caption(scene).encode(), "json": json.dumps(scene_json(scene)).encode()}


def question(color: str, qtype: str) -> str:
    return TEMPLATES[qtype].format(c=color)


def ask(scene: Scene, rng: np.random.Generator, n_nonrel: int = 10, n_rel: int = 10) -> list[QA]:
    """Like the generator: each question picks a random colour and a random subtype.

    Returns the non-relational questions first, then the relational ones.
    """
    colors = list(COLORS)
    qas: list[QA] = []
    for n, types in ((n_nonrel, NON_RELATIONAL), (n_rel, RELATIONAL)):
        for _ in range(n):
            color = colors[int(rng.integers(len(colors)))]
            qtype = types[int(rng.integers(len(types)))]
            qas.append(QA(question(color, qtype), answer(scene, color, qtype), qtype))
    return qas


def _write_split(
    root: Path, split: str, n_images: int, seed: int, n_q: int, shard_size: int | None = None,
    captions: bool = False, style: RenderStyle = STYLES["paper"], augment: bool = False,
) -> tuple[list[dict], list[dict], list[str], list[dict]]:
    """Render one split's images; returns (LLaVA records, flat QA rows, shard paths, per-image
    styles (only with `augment`)).

    With `shard_size`, the same images (and their captions) also go into
    `shards/{split}-NNNNNN.tar`; otherwise no shards are written. With `captions`, each image's
    question record is followed by its caption record, id `{id}-caption`. Images are drawn in
    `style`, or with `augment` each in its own `sample_style`, from the split's render stream.
    """
    rng = stream_rng(seed, split)
    render_rng = stream_rng(seed, f"render-{split}")
    records, rows, samples, styles = [], [], [], []
    for i in range(n_images):
        scene = sample_scene(rng)
        qas = ask(scene, rng, n_q, n_q)
        qas = [qas[k] for k in rng.permutation(len(qas))]
        rid, rel = record_id(split, i), image_relpath(split, i)
        image_style = sample_style(render_rng) if augment else style
        if augment:
            styles.append({"image": rel, **image_style.to_json()})
        png = save_png(render(scene, image_style, render_rng), root / rel)
        records.append(llava_record(rid, rel, qas))
        if captions:
            records.append(caption_record(f"{rid}-caption", rel, caption(scene)))
        rows.extend(qa_rows(split, i, qas))
        if shard_size is not None:
            samples.append(_shard_sample(rid, png, scene))
    shards = [] if shard_size is None else [str(p) for p in write_shards(root / "shards", split, samples, shard_size)]
    return records, rows, shards, styles


def _rendering_params(style: str, val_style: str, augment: bool) -> dict:
    """meta.json's record of the styles: empty for the default (paper, paper, no augment)."""
    if (style, val_style, augment) == ("paper", "paper", False):
        return {}
    return {
        "style": {"name": style, **STYLES[style].to_json()},
        "val_style": {"name": val_style, **STYLES[val_style].to_json()},
        "augment": AUGMENT if augment else False,
    }


def write_sort_of_clevr(
    out: str | Path,
    train_images: int = 9800,
    val_images: int = 200,
    seed: int = 0,
    questions_per_image: int = 10,
    shards: bool = False,
    shard_size: int = 1000,
    captions: bool = False,
    style: str = "paper",
    val_style: str | None = None,
    augment: bool = False,
) -> dict:
    """Write the dataset (images, LLaVA json, val_qa.jsonl, tokenizer/, meta.json) under `out`.

    With `shards`, also image-caption webdataset shards `shards/{train,val}-NNNNNN.tar` of
    `shard_size` samples (`key.png`, `key.txt` caption, `key.json` scene) for the `clip` stage.
    With `captions`, train.json and val.json also hold one caption record per image ("Describe
    the image." -> the scene's caption): the supervision that teaches the LM to find an object
    by its colour among the image tokens (docs/benchmarks.md, Sort-of-CLEVR "With caption records").

    `questions_per_image` is per kind: each image gets that many non-relational AND
    that many relational questions. Train and val use independent random streams
    derived from `seed`, so the val set does not change with `train_images`.

    Images are drawn in the named `style` (`STYLES`; val in `val_style`, default `style`). With
    `augment`, each training image gets its own style (`sample_style`), listed in
    train_styles.jsonl. Styles change pixels only. meta.json records style, val_style and augment
    whenever they are not the default (paper, paper, off), so a default dataset's files stay as
    they were before styles existed.
    """
    check_positive("train_images", train_images)
    check_positive("val_images", val_images)
    check_positive("questions_per_image", questions_per_image)
    check_positive("shard_size", shard_size)
    train_render = style_named(style, "style")
    val_style = style if val_style is None else val_style
    val_render = style_named(val_style, "val_style")
    for name, flag in (("shards", shards), ("captions", captions), ("augment", augment)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be true or false, got {flag!r}")
    size = shard_size if shards else None
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)

    train, train_rows, train_shards, train_styles = _write_split(
        root, "train", train_images, seed, questions_per_image, size, captions, train_render, augment)
    val, val_rows, val_shards, _ = _write_split(root, "val", val_images, seed, questions_per_image, size, captions,
                                                val_render)
    if augment:
        write_jsonl(root / "train_styles.jsonl", train_styles)
    write_json(root / "train.json", train)
    write_json(root / "val.json", val)
    write_jsonl(root / "val_qa.jsonl", val_rows)
    train_tokenizer(qa_texts(train + val), root / "tokenizer")

    params = {
        "train_images": train_images,
        "val_images": val_images,
        "questions_per_image": questions_per_image,
        "image_size": IMAGE_SIZE,
        "object_size": OBJECT_SIZE,
        "colors": {k: list(v) for k, v in COLORS.items()},
        "shapes": list(SHAPES),
        "question_types": {"non_relational": list(NON_RELATIONAL), "relational": list(RELATIONAL)},
        "templates": TEMPLATES,
        **({"shard_size": shard_size} if shards else {}),
        **({"captions": True} if captions else {}),
        **_rendering_params(style, val_style, augment),
    }
    counts = {
        "train_images": train_images,
        "val_images": val_images,
        "train_questions": len(train_rows),
        **({"train_captions": train_images} if captions else {}),
        "val_questions": len(val_rows),
        **({"train_shards": len(train_shards), "val_shards": len(val_shards)} if shards else {}),
    }
    write_json(root / "meta.json", {"generator": "sort_of_clevr", "seed": seed, "params": params, "counts": counts}, 2)
    return {
        "root": str(root),
        "train_json": str(root / "train.json"),
        "val_json": str(root / "val.json"),
        "val_qa": str(root / "val_qa.jsonl"),
        "tokenizer": str(root / "tokenizer"),
        "meta": str(root / "meta.json"),
        **({"shards": {"train": train_shards, "val": val_shards}} if shards else {}),
        **({"train_styles": str(root / "train_styles.jsonl")} if augment else {}),
        **counts,
    }
