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
    "Obj",
    "Scene",
    "answer",
    "ask",
    "caption",
    "render",
    "sample_scene",
    "scene_json",
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

_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]


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


def render(scene: Scene) -> np.ndarray:
    """Draw the scene on white: (75, 75, 3) uint8."""
    img = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 255, dtype=np.uint8)
    for o in scene.objects:
        dx, dy = _XX - o.cx, _YY - o.cy
        if o.shape == "circle":
            mask = dx * dx + dy * dy <= OBJECT_SIZE * OBJECT_SIZE
        elif o.shape == "square":
            mask = (np.abs(dx) <= OBJECT_SIZE) & (np.abs(dy) <= OBJECT_SIZE)
        else:
            raise ValueError(f"unknown shape {o.shape!r}")
        img[mask] = COLORS[o.color]
    return img


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
    captions: bool = False,
) -> tuple[list[dict], list[dict], list[str]]:
    """Render one split's images; returns (LLaVA records, flat QA rows, shard paths).

    With `shard_size`, the same images (and their captions) also go into
    `shards/{split}-NNNNNN.tar`; otherwise no shards are written. With `captions`, each image's
    question record is followed by its caption record, id `{id}-caption`.
    """
    rng = stream_rng(seed, split)
    records, rows, samples = [], [], []
    for i in range(n_images):
        scene = sample_scene(rng)
        qas = ask(scene, rng, n_q, n_q)
        qas = [qas[k] for k in rng.permutation(len(qas))]
        rid, rel = record_id(split, i), image_relpath(split, i)
        png = save_png(render(scene), root / rel)
        records.append(llava_record(rid, rel, qas))
        if captions:
            records.append(caption_record(f"{rid}-caption", rel, caption(scene)))
        rows.extend(qa_rows(split, i, qas))
        if shard_size is not None:
            samples.append(_shard_sample(rid, png, scene))
    shards = [] if shard_size is None else [str(p) for p in write_shards(root / "shards", split, samples, shard_size)]
    return records, rows, shards


def write_sort_of_clevr(
    out: str | Path,
    train_images: int = 9800,
    val_images: int = 200,
    seed: int = 0,
    questions_per_image: int = 10,
    shards: bool = False,
    shard_size: int = 1000,
    captions: bool = False,
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
    """
    check_positive("train_images", train_images)
    check_positive("val_images", val_images)
    check_positive("questions_per_image", questions_per_image)
    check_positive("shard_size", shard_size)
    for name, flag in (("shards", shards), ("captions", captions)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be true or false, got {flag!r}")
    size = shard_size if shards else None
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)

    train, train_rows, train_shards = _write_split(root, "train", train_images, seed, questions_per_image, size, captions)
    val, val_rows, val_shards = _write_split(root, "val", val_images, seed, questions_per_image, size, captions)
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
        **counts,
    }
