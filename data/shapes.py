"""Shapes world: coloured shapes on a 3x3 grid, for captioning, VQA and hallucination probes.

Every fact about an image is known exactly, so captions and answers are ground truth
and a model's errors can be read off directly. An "object" is a colour+shape pair
("red circle"). Objects are drawn with a skewed prior (earlier colours/shapes are more
common, `popularity`) and a co-occurrence bias (later objects often repeat the colour
of an earlier one, `cooccurrence`). Without such structure POPE's popular and
adversarial negative splits (Li et al. 2023) would be indistinguishable from random.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from data.interleaved import write_interleaved_shards
from data.tokenizer import train_tokenizer
from data.writers import (
    CAPTION_PROMPT,
    QA,
    check_positive,
    image_relpath,
    llava_record,
    png_bytes,
    qa_rows,
    qa_texts,
    record_id,
    stream_rng,
    write_json,
    write_jsonl,
    write_shards,
)

RGB = tuple[int, int, int]

DEFAULT_COLORS: dict[str, RGB] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (235, 200, 20),
    "purple": (140, 50, 170),
    "orange": (245, 130, 20),
}
DEFAULT_SHAPES = ("circle", "square", "triangle")
DEFAULT_SIZES: dict[str, float] = {"small": 0.2, "large": 0.4}  # half-extent / cell size
GRID = 3
POSITIONS = {
    (r, c): "center" if (r, c) == (1, 1) else f"{('top', 'middle', 'bottom')[r]} {('left', 'middle', 'right')[c]}"
    for r in range(GRID)
    for c in range(GRID)
}
VQA_TYPES = ("color", "shape", "count", "position", "existence")
POPE_SPLITS = ("random", "popular", "adversarial")
BACKGROUND = (255, 255, 255)


def shape_masks(dx: np.ndarray, dy: np.ndarray, h: float) -> dict[str, np.ndarray]:
    """Pixel masks per shape, for offsets (dx, dy) from the centre and half-extent h."""
    ax, ay = np.abs(dx), np.abs(dy)
    return {
        "circle": dx * dx + dy * dy <= h * h,
        "square": (ax <= h) & (ay <= h),
        "triangle": (ay <= h) & (2 * ax <= dy + h),  # apex up (image y grows downward)
        "diamond": ax + ay <= h,
        "cross": ((ax <= h / 3) & (ay <= h)) | ((ay <= h / 3) & (ax <= h)),
    }


SHAPE_NAMES = tuple(shape_masks(np.zeros(1), np.zeros(1), 1.0))


@dataclass(frozen=True)
class World:
    """Vocabulary and sampling parameters of a shapes world (validated on construction)."""

    colors: Mapping[str, RGB] = field(default_factory=lambda: dict(DEFAULT_COLORS))
    shapes: Sequence[str] = DEFAULT_SHAPES
    sizes: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_SIZES))
    min_objects: int = 1
    max_objects: int = 5
    image_size: int = 72
    popularity: float = 0.8  # Zipf exponent over colour and shape order; 0 = uniform
    cooccurrence: float = 0.5  # chance a later object reuses an earlier object's colour

    def __post_init__(self) -> None:
        object.__setattr__(self, "colors", {str(k): tuple(int(c) for c in v) for k, v in dict(self.colors).items()})
        object.__setattr__(self, "shapes", tuple(self.shapes))
        object.__setattr__(self, "sizes", {str(k): float(v) for k, v in dict(self.sizes).items()})
        if not self.colors or any(len(v) != 3 or not all(0 <= c <= 255 for c in v) for v in self.colors.values()):
            raise ValueError(f"colors must map names to (r, g, b) in 0..255, got {self.colors!r}")
        if not self.shapes or len(set(self.shapes)) != len(self.shapes) or set(self.shapes) - set(SHAPE_NAMES):
            raise ValueError(f"shapes must be distinct names from {SHAPE_NAMES}, got {self.shapes!r}")
        if not self.sizes or not all(0 < v < 0.5 for v in self.sizes.values()):
            raise ValueError(f"sizes must map names to half-extents in (0, 0.5) of a cell, got {self.sizes!r}")
        check_positive("min_objects", self.min_objects)
        check_positive("max_objects", self.max_objects)
        if not self.min_objects <= self.max_objects <= GRID * GRID:
            raise ValueError(
                f"need min_objects <= max_objects <= {GRID * GRID}, got {self.min_objects}, {self.max_objects}"
            )
        check_positive("image_size", self.image_size)
        if self.image_size % GRID or self.image_size < 4 * GRID:
            raise ValueError(f"image_size must be a multiple of {GRID} and >= {4 * GRID}, got {self.image_size}")
        if self.popularity < 0:
            raise ValueError(f"popularity must be >= 0, got {self.popularity}")
        if not 0 <= self.cooccurrence <= 1:
            raise ValueError(f"cooccurrence must be in [0, 1], got {self.cooccurrence}")

    @property
    def objects(self) -> tuple[str, ...]:
        """Every object name ("red circle", ...), colour-major: the POPE candidate set."""
        return tuple(f"{c} {s}" for c in self.colors for s in self.shapes)

    def config(self) -> dict:
        return {
            "colors": {k: list(v) for k, v in self.colors.items()},
            "shapes": list(self.shapes),
            "sizes": dict(self.sizes),
            "min_objects": self.min_objects,
            "max_objects": self.max_objects,
            "image_size": self.image_size,
            "popularity": self.popularity,
            "cooccurrence": self.cooccurrence,
        }


@dataclass(frozen=True)
class Obj:
    color: str
    shape: str
    size: str
    row: int
    col: int

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"

    @property
    def position(self) -> str:
        return POSITIONS[(self.row, self.col)]


@dataclass(frozen=True)
class Scene:
    """Objects in distinct cells, kept in reading order (row, then column)."""

    objects: tuple[Obj, ...]

    def __post_init__(self) -> None:
        cells = [(o.row, o.col) for o in self.objects]
        if not cells or len(set(cells)) != len(cells) or not all(0 <= r < GRID and 0 <= c < GRID for r, c in cells):
            raise ValueError(f"a scene needs >= 1 object in distinct cells of the {GRID}x{GRID} grid, got {cells}")
        object.__setattr__(self, "objects", tuple(sorted(self.objects, key=lambda o: (o.row, o.col))))

    @property
    def names(self) -> set[str]:
        return {o.name for o in self.objects}

    def to_json(self) -> dict:
        return {"objects": [{**vars(o), "position": o.position} for o in self.objects]}


def _zipf(n: int, s: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** s
    return w / w.sum()


def sample_scene(world: World, rng: np.random.Generator) -> Scene:
    """Random scene: object count uniform, cells distinct, colour/shape from the skewed priors."""
    colors, sizes = list(world.colors), list(world.sizes)
    p_color, p_shape = _zipf(len(colors), world.popularity), _zipf(len(world.shapes), world.popularity)
    n = int(rng.integers(world.min_objects, world.max_objects + 1))
    cells = rng.choice(GRID * GRID, size=n, replace=False)
    objects: list[Obj] = []
    for cell in cells:
        if objects and rng.random() < world.cooccurrence:
            color = objects[int(rng.integers(len(objects)))].color
        else:
            color = colors[int(rng.choice(len(colors), p=p_color))]
        shape = world.shapes[int(rng.choice(len(world.shapes), p=p_shape))]
        size = sizes[int(rng.integers(len(sizes)))]
        objects.append(Obj(color, shape, size, int(cell) // GRID, int(cell) % GRID))
    return Scene(tuple(objects))


def render(scene: Scene, world: World) -> np.ndarray:
    """Draw on white: (image_size, image_size, 3) uint8, each object centred in its cell."""
    n, cell = world.image_size, world.image_size // GRID
    img = np.empty((n, n, 3), dtype=np.uint8)
    img[:] = BACKGROUND
    yy, xx = np.mgrid[0:n, 0:n]
    for o in scene.objects:
        cx, cy = o.col * cell + (cell - 1) / 2, o.row * cell + (cell - 1) / 2
        img[shape_masks(xx - cx, yy - cy, world.sizes[o.size] * cell)[o.shape]] = world.colors[o.color]
    return img


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def caption(scene: Scene) -> str:
    """E.g. "A small red circle at the top left and a large blue triangle at the center."."""
    parts = [_a(f"{o.size} {o.color} {o.shape} at the {o.position}") for o in scene.objects]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return text[0].upper() + text[1:] + "."


def existence_question(name: str) -> str:
    """Shared by VQA `existence` and the POPE probes (POPE's own phrasing)."""
    return f"Is there {_a(name)} in the image?"


def all_questions(scene: Scene, world: World) -> list[QA]:
    """Every question this world can ask about the scene, with answers.

    Only unambiguous ones: objects are referred to by their cell (unique), and
    `position` is asked only for a colour+shape that occurs once in the scene.
    """
    qas: list[QA] = []
    for o in scene.objects:
        qas.append(QA(f"What color is the {o.shape} at the {o.position}?", o.color, "color"))
        qas.append(QA(f"What shape is the object at the {o.position}?", o.shape, "shape"))
    qas.append(QA("How many objects are there?", str(len(scene.objects)), "count"))
    for c in world.colors:
        qas.append(QA(f"How many {c} objects are there?", str(sum(o.color == c for o in scene.objects)), "count"))
    names = [o.name for o in scene.objects]
    for o in scene.objects:
        if names.count(o.name) == 1:
            qas.append(QA(f"Where is the {o.name}?", o.position, "position"))
    for name in world.objects:
        qas.append(QA(existence_question(name), "yes" if name in names else "no", "existence"))
    return qas


def ask(scene: Scene, world: World, rng: np.random.Generator) -> list[QA]:
    """One random question per type (existence: one "yes" and one "no"), in random order.

    A type with nothing to ask (e.g. no unique colour+shape for `position`) is skipped.
    """
    pools: dict[str, list[QA]] = {}
    for qa in all_questions(scene, world):
        key = f"existence-{qa.answer}" if qa.type == "existence" else qa.type
        pools.setdefault(key, []).append(qa)
    if rng.random() < 0.5:  # total count half the time, else a per-colour count
        pools["count"] = pools["count"][:1]
    else:
        pools["count"] = pools["count"][1:]
    picked = [pool[int(rng.integers(len(pool)))] for _, pool in sorted(pools.items())]
    return [picked[i] for i in rng.permutation(len(picked))]


@dataclass(frozen=True)
class ObjectStats:
    """Dataset statistics POPE samples from: image frequency and pairwise co-occurrence."""

    objects: tuple[str, ...]
    frequency: np.ndarray  # [n] images containing each object
    cooccurrence: np.ndarray  # [n, n] images containing both (diagonal zero)


def object_stats(scenes: Sequence[Scene], world: World) -> ObjectStats:
    index = {name: i for i, name in enumerate(world.objects)}
    present = np.zeros((len(scenes), len(index)), dtype=np.int64)
    for k, scene in enumerate(scenes):
        present[k, [index[n] for n in scene.names]] = 1
    cooc = present.T @ present
    np.fill_diagonal(cooc, 0)
    return ObjectStats(world.objects, present.sum(0), cooc)


def pope_probes(scene: Scene, stats: ObjectStats, rng: np.random.Generator, k: int = 3) -> list[dict]:
    """POPE probes for one image: the same `n` present objects ("yes") in every split,
    plus `n` absent objects ("no") chosen per split, n = min(k, #present, #absent):

    random: uniformly among absent objects; popular: the most frequent absent objects in
    the dataset; adversarial: the absent objects co-occurring most with the present ones.
    Ties go to the more frequent, then the earlier object, so the splits are deterministic.
    """
    index = {name: i for i, name in enumerate(stats.objects)}
    present = sorted(scene.names, key=index.__getitem__)
    absent = [name for name in stats.objects if name not in scene.names]
    n = min(k, len(present), len(absent))
    positives = [present[i] for i in sorted(rng.choice(len(present), size=n, replace=False))]
    absent_ids = np.array([index[a] for a in absent])
    freq = stats.frequency[absent_ids]
    cooc = stats.cooccurrence[[index[p] for p in present]][:, absent_ids].sum(0)
    order = np.arange(len(absent))
    negatives = {
        "random": [absent[i] for i in sorted(rng.choice(len(absent), size=n, replace=False))],
        "popular": [absent[i] for i in np.lexsort((order, -freq))[:n]],
        "adversarial": [absent[i] for i in np.lexsort((order, -freq, -cooc))[:n]],
    }
    return [
        {"question": existence_question(name), "answer": ans, "split": split, "object": name}
        for split in POPE_SPLITS
        for pos, neg in zip(positives, negatives[split])
        for name, ans in ((pos, "yes"), (neg, "no"))
    ]


class _Item(NamedTuple):
    scene: Scene
    qas: list[QA]  # caption turn first, then the VQA turns
    png: bytes

    @property
    def caption(self) -> str:
        return self.qas[0].answer


def _generate(world: World, rng: np.random.Generator, n: int) -> list[_Item]:
    items = []
    for _ in range(n):
        scene = sample_scene(world, rng)
        qas = [QA(CAPTION_PROMPT, caption(scene), "caption"), *ask(scene, world, rng)]
        items.append(_Item(scene, qas, png_bytes(render(scene, world))))
    return items


def _write_single_objects(root: Path, items: Sequence[_Item], world: World) -> list[dict]:
    """Each val object drawn alone in its cell: zero-shot classification by colour and shape."""
    (root / "images" / "zeroshot").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, item in enumerate(items):
        for k, obj in enumerate(item.scene.objects):
            rel = f"images/zeroshot/{i:06d}-{k}.png"
            (root / rel).write_bytes(png_bytes(render(Scene((obj,)), world)))
            rows.append({"id": f"{record_id('val', i)}-{k}", "image": rel, "label": obj.name, "color": obj.color,
                         "shape": obj.shape, "size": obj.size, "position": obj.position})
    return rows


def _preference_rows(split: str, items: Sequence[_Item], world: World, seed: int) -> list[dict]:
    from data.preferences import preference_pairs  # imports this module

    rng = stream_rng(seed, f"preferences-{split}")
    return [{"id": f"{record_id(split, i)}-{k}", "image": image_relpath(split, i), **pair}
            for i, item in enumerate(items) for k, pair in enumerate(preference_pairs(item.scene, world, rng))]


DOCUMENT_LEADS = ("", "", "Some pictures of shapes. ", "Here are a few scenes. ")


def _documents(items: Sequence[_Item], rng: np.random.Generator):
    """Consecutive scenes grouped into MMC4-like documents of 2-4 images, each image followed by
    its caption; sometimes text precedes the first image (masked out of the loss)."""
    i = 0
    while i < len(items):
        n = int(rng.integers(2, 5))
        group = items[i:i + n]
        i += n
        yield [x.png for x in group], [x.caption for x in group], DOCUMENT_LEADS[int(rng.integers(len(DOCUMENT_LEADS)))]


def _shard_sample(key: str, item: _Item) -> dict:
    scene_json = json.dumps(item.scene.to_json()).encode()
    return {"__key__": key, "png": item.png, "txt": item.caption.encode(), "json": scene_json}


def write_shapes(
    out: str | Path,
    train_images: int = 2000,
    val_images: int = 200,
    seed: int = 0,
    colors: Mapping[str, RGB] | None = None,
    shapes: Sequence[str] = DEFAULT_SHAPES,
    sizes: Mapping[str, float] | None = None,
    min_objects: int = 1,
    max_objects: int = 5,
    image_size: int = 72,
    shard_size: int = 1000,
    popularity: float = 0.8,
    cooccurrence: float = 0.5,
    pope_per_image: int = 3,
) -> dict:
    """Write the shapes dataset under `out` and return a summary (paths, counts).

    Layout: images/{train,val}/NNNNNN.png, train.json / val.json (LLaVA), val_qa.jsonl,
    val_captions.jsonl, pope_val.jsonl, zeroshot_val.jsonl (each val object drawn alone),
    preference_{train,val}.jsonl (DPO pairs), shards/interleaved-{train,val}-NNNNNN.tar (Flamingo documents), shards/{train,val}-NNNNNN.tar (png/txt/json),
    tokenizer/, meta.json. POPE popularity and co-occurrence come from the train split,
    the data a model's object priors are learned from.
    """
    check_positive("train_images", train_images)
    check_positive("val_images", val_images)
    check_positive("shard_size", shard_size)
    check_positive("pope_per_image", pope_per_image)
    world = World(
        colors=DEFAULT_COLORS if colors is None else colors,
        shapes=shapes,
        sizes=DEFAULT_SIZES if sizes is None else sizes,
        min_objects=min_objects,
        max_objects=max_objects,
        image_size=image_size,
        popularity=popularity,
        cooccurrence=cooccurrence,
    )
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)

    splits = {s: _generate(world, stream_rng(seed, s), n) for s, n in (("train", train_images), ("val", val_images))}
    records: dict[str, list[dict]] = {}
    shards: dict[str, list[str]] = {}
    for split, items in splits.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        for i, item in enumerate(items):
            (root / image_relpath(split, i)).write_bytes(item.png)
        records[split] = [
            llava_record(record_id(split, i), image_relpath(split, i), item.qas) for i, item in enumerate(items)
        ]
        write_json(root / f"{split}.json", records[split])
        samples = (_shard_sample(record_id(split, i), item) for i, item in enumerate(items))
        shards[split] = [str(p) for p in write_shards(root / "shards", split, samples, shard_size)]
        shards[f"interleaved-{split}"] = [str(p) for p in write_interleaved_shards(
            root / "shards", split, _documents(items, stream_rng(seed, f"documents-{split}")), shard_size)]

    val = splits["val"]
    n_qa = write_jsonl(root / "val_qa.jsonl", (r for i, x in enumerate(val) for r in qa_rows("val", i, x.qas[1:])))
    captions = (
        {"id": record_id("val", i), "image": image_relpath("val", i), "caption": x.caption} for i, x in enumerate(val)
    )
    write_jsonl(root / "val_captions.jsonl", captions)
    stats = object_stats([item.scene for item in splits["train"]], world)
    probe_rng = stream_rng(seed, "probes")
    pope = []
    for i, item in enumerate(val):
        seen: dict[str, int] = {}  # ids number the probes within each split: val-000000-popular-00, ...
        for p in pope_probes(item.scene, stats, probe_rng, pope_per_image):
            k = seen[p["split"]] = seen.get(p["split"], -1) + 1
            pope.append({"id": f"{record_id('val', i)}-{p['split']}-{k:02d}", "image": image_relpath("val", i), **p})
    write_jsonl(root / "pope_val.jsonl", pope)
    n_zeroshot = write_jsonl(root / "zeroshot_val.jsonl", _write_single_objects(root, val, world))
    n_pref = {split: write_jsonl(root / f"preference_{split}.jsonl", _preference_rows(split, items, world, seed))
              for split, items in splits.items()}
    train_tokenizer(qa_texts(records["train"] + records["val"]), root / "tokenizer")

    counts = {
        "train_images": train_images,
        "val_images": val_images,
        "train_turns": sum(len(r["types"]) for r in records["train"]),
        "val_questions": n_qa,
        "pope_probes": len(pope),
        "zeroshot_images": n_zeroshot,
        "preference_pairs": n_pref["train"] + n_pref["val"],
        "train_shards": len(shards["train"]),
        "val_shards": len(shards["val"]),
    }
    meta = {
        "generator": "shapes",
        "seed": seed,
        "params": {**world.config(), "shard_size": shard_size, "pope_per_image": pope_per_image},
        "counts": counts,
        "train_object_frequency": dict(zip(stats.objects, stats.frequency.tolist())),
    }
    write_json(root / "meta.json", meta, 2)
    return {
        "root": str(root),
        **{f"{s}_json": str(root / f"{s}.json") for s in ("train", "val")},
        "val_qa": str(root / "val_qa.jsonl"),
        "val_captions": str(root / "val_captions.jsonl"),
        "pope": str(root / "pope_val.jsonl"),
        "zeroshot": str(root / "zeroshot_val.jsonl"),
        **{f"preference_{s}": str(root / f"preference_{s}.jsonl") for s in ("train", "val")},
        "shards": shards,
        "tokenizer": str(root / "tokenizer"),
        "meta": str(root / "meta.json"),
        **counts,
    }
