"""Shapes-HR world: small shapes on a large canvas, for any-resolution (AnyRes) experiments.

Scenes are 288x288 with objects 7-14 px across, placed with jitter in the cells of a 3x3 grid.
Shrunk to a 72 px tower input (4x) an object keeps its colour and place but becomes a 2-3 px blob
whose shape is lost: every object's area is drawn from one range whatever its shape (the
half-extent follows from the area), so a blob's amount of ink does not tell shapes apart, and
within the world's range of sizes and positions some square shrinks to within a fifth of a
triangle's contrast at every pixel (tests/test_shapes_hr.py). Questions that need the shape (its
name, counts of a shape, existence and position of a colour+shape whose colour the scene also
shows on another shape) then separate a model reading full-resolution tiles from one reading the
resized image; colour questions are the control that either can answer.

Besides single images: two-image questions ("In which image is the red square?", "How many
triangles are in the two images together?") over pairs of a split's scenes, and 4-frame clips
("Which way does the red circle move?") in which another object of the same colour but another
shape moves another way. Clips go to their own files (`train_video.json`, `val_video_qa.jsonl`),
so `train.json` stays readable by image-only training code.

Answers are balanced per question type (`AnswerBalancer`), so chance is one over the type's
choices; each split's random stream spawns one child per kind (scenes, pairs, clips).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.shapes import BACKGROUND, DEFAULT_COLORS, DEFAULT_SHAPES, GRID, POSITIONS, existence_question, shape_masks
from data.templates import IMAGE_TOKEN
from data.tokenizer import train_tokenizer
from data.writers import (
    QA,
    caption_record,
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
)

CANVAS = 288
TOWER_SIZE = 72  # the tower's input side: a 4x shrink of the canvas loses the shapes
CELL = CANVAS // GRID
COLORS = {name: DEFAULT_COLORS[name] for name in ("red", "green", "blue", "yellow")}  # far apart even when blurred
SHAPES = DEFAULT_SHAPES
AREA_PX = (48.0, 96.0)  # object area range in canvas pixels, the same for every shape
SHAPE_AREA = {"circle": math.pi, "square": 4.0, "triangle": 2.0}  # mask area / half-extent**2 (`shape_masks`)
MIN_OBJECTS, MAX_OBJECTS = 3, 6
MARGIN = 4  # pixels kept free between an object and its cell's (or the canvas's) border
FRAMES = 4
STEP_PX = 16  # a clip's objects move this far per frame (4 px at the tower's size: motion stays visible)
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
CLIP_EXTRAS = 2  # a clip holds its subject, a same-colour distractor and up to this many other objects

CHOICES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "color": tuple(COLORS),
    "count": ("0", "1", "2", "3"),
    "existence": ("yes", "no"),
    "position": tuple(POSITIONS.values()),
    "which_image": ("1", "2"),
    "count_together": ("1", "2", "3", "4", "5"),
    "motion": tuple(DIRECTIONS),
}
SINGLE_TYPES = ("shape", "color", "count", "existence", "position")
PAIR_TYPES = ("which_image", "count_together")


def half_extent(shape: str, area: float) -> float:
    """The half-extent that gives `shape` about `area` pixels."""
    return math.sqrt(area / SHAPE_AREA[shape])


MAX_HALF_EXTENT = max(half_extent(s, AREA_PX[1]) for s in SHAPES)
JITTER = CELL / 2 - MAX_HALF_EXTENT - MARGIN  # how far a centre may stray from its cell's centre


@dataclass(frozen=True)
class Obj:
    """A coloured shape of `area` pixels centred at (x, y) canvas pixels."""

    color: str
    shape: str
    area: float
    x: float
    y: float

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"

    @property
    def cell(self) -> tuple[int, int]:
        return int(self.y // CELL), int(self.x // CELL)

    @property
    def position(self) -> str:
        return POSITIONS[self.cell]

    def moved(self, dx: float, dy: float) -> Obj:
        return Obj(self.color, self.shape, self.area, self.x + dx, self.y + dy)


@dataclass(frozen=True)
class Scene:
    """Objects in distinct grid cells, kept in reading order (row, then column)."""

    objects: tuple[Obj, ...]

    def __post_init__(self) -> None:
        cells = [o.cell for o in self.objects]
        if not cells or len(set(cells)) != len(cells) or not all(0 <= r < GRID and 0 <= c < GRID for r, c in cells):
            raise ValueError(f"a scene needs >= 1 object in distinct cells of the {GRID}x{GRID} grid, got {cells}")
        object.__setattr__(self, "objects", tuple(sorted(self.objects, key=lambda o: o.cell)))

    def count(self, shape: str) -> int:
        return sum(o.shape == shape for o in self.objects)

    @property
    def names(self) -> list[str]:
        return [o.name for o in self.objects]

    @property
    def colors(self) -> set[str]:
        return {o.color for o in self.objects}

    def to_json(self) -> dict:
        return {"objects": [{**vars(o), "position": o.position} for o in self.objects]}


def render(objects: Sequence[Obj], canvas: int = CANVAS) -> np.ndarray:
    """(canvas, canvas, 3) uint8: the objects drawn on white, each mask computed in its own box."""
    img = np.empty((canvas, canvas, 3), dtype=np.uint8)
    img[:] = BACKGROUND
    for o in objects:
        h = half_extent(o.shape, o.area)
        x0, x1 = max(0, math.floor(o.x - h)), min(canvas, math.ceil(o.x + h) + 1)
        y0, y1 = max(0, math.floor(o.y - h)), min(canvas, math.ceil(o.y + h) + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        img[y0:y1, x0:x1][shape_masks(xx - o.x, yy - o.y, h)[o.shape]] = COLORS[o.color]
    return img


def _random_object(rng: np.random.Generator, color: str | None = None,
                   shape: str | None = None) -> tuple[str, str, float]:
    """(colour, shape, area), each uniform unless given."""
    color = color or list(COLORS)[int(rng.integers(len(COLORS)))]
    shape = shape or SHAPES[int(rng.integers(len(SHAPES)))]
    return color, shape, float(rng.uniform(*AREA_PX))


def sample_scene(rng: np.random.Generator) -> Scene:
    """3-6 objects in distinct cells; colour, shape, area and the offset from the cell centre uniform."""
    n = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    objects = []
    for cell in rng.choice(GRID * GRID, size=n, replace=False):
        color, shape, area = _random_object(rng)
        row, col = divmod(int(cell), GRID)
        dx, dy = rng.uniform(-JITTER, JITTER, size=2)
        objects.append(Obj(color, shape, area, (col + 0.5) * CELL + dx, (row + 0.5) * CELL + dy))
    return Scene(tuple(objects))


class AnswerBalancer:
    """Keeps every question type's answers near uniform over its choices (`CHOICES`): each pick
    takes, among the questions on offer, one whose answer has been given least so far (ties at
    random), so a model that ignores the image scores chance."""

    def __init__(self, choices: Mapping[str, Sequence[str]] = CHOICES) -> None:
        self.counts = {t: dict.fromkeys(c, 0) for t, c in choices.items()}

    def pick(self, qas: Sequence[QA], rng: np.random.Generator) -> QA | None:
        """One of `qas` (all of one type) whose answer is a choice of its type; None if none is."""
        qas = [qa for qa in qas if qa.answer in self.counts[qa.type]]
        if not qas:
            return None
        least = min(self.counts[qa.type][qa.answer] for qa in qas)
        pool = [qa for qa in qas if self.counts[qa.type][qa.answer] == least]
        qa = pool[int(rng.integers(len(pool)))]
        self.counts[qa.type][qa.answer] += 1
        return qa

    def next_answer(self, qtype: str, rng: np.random.Generator) -> str:
        """The answer to build the next item around (clips are drawn to fit their answer)."""
        least = min(self.counts[qtype].values())
        pool = [a for a, n in self.counts[qtype].items() if n == least]
        answer = pool[int(rng.integers(len(pool)))]
        self.counts[qtype][answer] += 1
        return answer


def _shares_color(o: Obj, others: Sequence[Obj]) -> bool:
    """Another object of `o`'s colour but another shape: colour alone cannot single `o` out."""
    return any(p.color == o.color and p.shape != o.shape for p in others)


def single_questions(scene: Scene) -> dict[str, list[QA]]:
    """Every question of each single-image type the scene can ask, with answers. Existence
    negatives and position questions keep to objects colour alone cannot identify when the
    scene has any; position is asked only for a colour+shape the scene holds once."""
    objs, names = scene.objects, scene.names
    yes = [QA(existence_question(n), "yes", "existence") for n in dict.fromkeys(names)]
    absent = [f"{c} {s}" for c in COLORS for s in SHAPES if f"{c} {s}" not in names]
    hard_absent = [n for n in absent if n.split()[0] in scene.colors]
    unique = [o for o in objs if names.count(o.name) == 1]
    hard_unique = [o for o in unique if _shares_color(o, objs)]
    return {
        "shape": [QA(f"What shape is the object at the {o.position}?", o.shape, "shape") for o in objs],
        "color": [QA(f"What color is the object at the {o.position}?", o.color, "color") for o in objs],
        "count": [QA(f"How many {s}s are there?", str(scene.count(s)), "count") for s in SHAPES],
        "existence": yes + [QA(existence_question(n), "no", "existence") for n in hard_absent or absent],
        "position": [QA(f"Where is the {o.name}?", o.position, "position") for o in hard_unique or unique],
    }


def pair_questions(first: Scene, second: Scene) -> dict[str, list[QA]]:
    """Questions about two images: which one holds a colour+shape the other lacks (for each
    answer, those whose colour the other image also shows when there are any), and a shape's
    count over both."""
    which = []
    for k, (scene, other) in enumerate(((first, second), (second, first)), start=1):
        only_here = [n for n in dict.fromkeys(scene.names) if n not in other.names]
        hard = [n for n in only_here if n.split()[0] in other.colors]
        which += [QA(f"In which image is the {n}?", str(k), "which_image") for n in hard or only_here]
    return {
        "which_image": which,
        "count_together": [QA(f"How many {s}s are in the two images together?", str(first.count(s) + second.count(s)),
                              "count_together") for s in SHAPES],
    }


def ask(pools: Mapping[str, list[QA]], balancer: AnswerBalancer, rng: np.random.Generator) -> list[QA]:
    """One balanced question per type (a type with nothing to ask is skipped), in random order."""
    picked = [qa for qtype in pools if (qa := balancer.pick(pools[qtype], rng)) is not None]
    return [picked[i] for i in rng.permutation(len(picked))]


@dataclass(frozen=True)
class Clip:
    """Objects at frame 0, each with its direction; `subject` indexes the one asked about."""

    objects: tuple[Obj, ...]
    directions: tuple[str, ...]
    subject: int

    def frame(self, t: int) -> list[Obj]:
        return [o.moved(t * STEP_PX * DIRECTIONS[d][0], t * STEP_PX * DIRECTIONS[d][1])
                for o, d in zip(self.objects, self.directions)]

    @property
    def qa(self) -> QA:
        subject = self.objects[self.subject]
        return QA(f"Which way does the {subject.name} move?", self.directions[self.subject], "motion")


def _place(rng: np.random.Generator, direction: str, placed: list[list[Obj]], spec: tuple[str, str, float],
           tries: int = 100) -> list[Obj] | None:
    """An object's positions over the clip, inside the canvas and clear of the placed objects in
    every frame; None if `tries` draws found no room."""
    (dx, dy), lo, hi = DIRECTIONS[direction], MAX_HALF_EXTENT + MARGIN, CANVAS - MAX_HALF_EXTENT - MARGIN
    travel = (FRAMES - 1) * STEP_PX
    for _ in range(tries):
        x = rng.uniform(lo - min(dx, 0) * travel, hi - max(dx, 0) * travel)
        y = rng.uniform(lo - min(dy, 0) * travel, hi - max(dy, 0) * travel)
        path = [Obj(*spec, x + t * STEP_PX * dx, y + t * STEP_PX * dy) for t in range(FRAMES)]
        if all(max(abs(p.x - q.x), abs(p.y - q.y)) > 2 * (MAX_HALF_EXTENT + MARGIN)
               for other in placed for p, q in zip(path, other)):
            return path
    return None


def sample_clip(direction: str, rng: np.random.Generator) -> Clip:
    """A clip whose subject moves `direction`, with a distractor of its colour but another shape
    moving another way, and 0-2 further objects (none a copy of the subject's colour+shape)."""
    color, shape, area = _random_object(rng)
    other_shape = [s for s in SHAPES if s != shape][int(rng.integers(len(SHAPES) - 1))]
    other_ways = [d for d in DIRECTIONS if d != direction]
    specs = [((color, shape, area), direction),
             (_random_object(rng, color, other_shape), other_ways[int(rng.integers(len(other_ways)))])]
    while len(specs) < 2 + int(rng.integers(CLIP_EXTRAS + 1)):
        spec = _random_object(rng)
        if spec[:2] != (color, shape):
            specs.append((spec, list(DIRECTIONS)[int(rng.integers(len(DIRECTIONS)))]))
    while True:
        paths: list[list[Obj]] = []
        for spec, way in specs:
            path = _place(rng, way, paths, spec)
            if path is None:
                break
            paths.append(path)
        if len(paths) == len(specs):
            break
    order = rng.permutation(len(specs))
    subject = int(np.argmin(order))  # where spec 0, the subject, went
    return Clip(tuple(paths[i][0] for i in order), tuple(specs[i][1] for i in order), subject)


def caption(scene: Scene) -> str:
    """Every object in reading order with its colour, shape and cell: "red circle top left, blue
    square center". The dense supervision (LLaVA's caption alignment data plays this part) that
    makes a model find objects among the image tokens before single questions can be answered."""
    return ", ".join(f"{o.name} {o.position}" for o in scene.objects)


def image_lead(count: int) -> str:
    """The text that opens a several-image question, naming each image ("Image 1: <image>", a line each)."""
    return "".join(f"Image {k}: {IMAGE_TOKEN}\n" for k in range(1, count + 1))


def pair_record(rid: str, images: Sequence[str], qas: Sequence[QA]) -> dict:
    """A LLaVA record over several images: its first human turn opens with `image_lead`."""
    record = llava_record(rid, images[0], qas)
    first = record["conversations"][0]
    record["conversations"][0] = {**first, "value": image_lead(len(images)) + qas[0].question}
    return {**record, "image": list(images)}


def video_record(rid: str, frames: Sequence[str], qas: Sequence[QA]) -> dict:
    """A LLaVA-NeXT video record: one `<image>` stands for the whole clip."""
    record = llava_record(rid, frames[0], qas)
    return {"id": rid, "video": list(frames), "conversations": record["conversations"], "types": record["types"]}


def clip_frame_paths(split: str, index: int) -> list[str]:
    return [f"images/{split}/clips/{index:06d}-{t}.png" for t in range(FRAMES)]


@dataclass(frozen=True)
class _Split:
    """One split's LLaVA records and flat QA rows per kind (the val split's rows are written), and
    how often each answer was given per question type."""

    singles: list[dict]
    rows: list[dict]
    pairs: list[dict]
    pair_rows: list[dict]
    clips: list[dict]
    clip_rows: list[dict]
    answers: dict[str, dict[str, int]]


def _write_split(root: Path, split: str, n: int, seed: int, captions: bool = False) -> _Split:
    """Scenes, pairs of them and clips of one split: files written, records returned. With `captions`
    each scene's question record is followed by its caption record, id `{id}-caption`."""
    scene_rng, pair_rng, clip_rng = stream_rng(seed, split).spawn(3)
    balancer = AnswerBalancer()
    (root / "images" / split / "clips").mkdir(parents=True, exist_ok=True)
    scenes, singles, rows = [], [], []
    for i in range(n):
        scene = sample_scene(scene_rng)
        qas = ask(single_questions(scene), balancer, scene_rng)
        (root / image_relpath(split, i)).write_bytes(png_bytes(render(scene.objects)))
        scenes.append(scene)
        singles.append(llava_record(record_id(split, i), image_relpath(split, i), qas))
        if captions:
            singles.append(caption_record(f"{record_id(split, i)}-caption", image_relpath(split, i), caption(scene)))
        rows += qa_rows(split, i, qas)
    pairs, pair_rows = [], []
    for i in range(n):
        a, b = (int(k) for k in pair_rng.choice(n, size=2, replace=False))
        qas = ask(pair_questions(scenes[a], scenes[b]), balancer, pair_rng)
        rid, images = f"{split}-pair-{i:06d}", [image_relpath(split, a), image_relpath(split, b)]
        pairs.append(pair_record(rid, images, qas))
        pair_rows += [{"id": f"{rid}-{k:02d}", "image": images, "question": image_lead(len(images)) + qa.question,
                       "answer": qa.answer, "type": qa.type} for k, qa in enumerate(qas)]
    clips, clip_rows = [], []
    for i in range(n):
        clip = sample_clip(balancer.next_answer("motion", clip_rng), clip_rng)
        frames = clip_frame_paths(split, i)
        for t, path in enumerate(frames):
            (root / path).write_bytes(png_bytes(render(clip.frame(t))))
        rid = f"{split}-clip-{i:06d}"
        clips.append(video_record(rid, frames, [clip.qa]))
        clip_rows.append({"id": f"{rid}-00", "video": frames, "question": clip.qa.question, "answer": clip.qa.answer,
                          "type": clip.qa.type})
    return _Split(singles, rows, pairs, pair_rows, clips, clip_rows, balancer.counts)


def write_shapes_hr(out: str | Path, train_images: int = 2000, val_images: int = 200, seed: int = 0,
                    captions: bool = False) -> dict:
    """Write the Shapes-HR world under `out` and return a summary (paths, counts).

    Layout: images/{train,val}/NNNNNN.png (scenes), images/{train,val}/clips/NNNNNN-T.png (frames);
    train.json (single-image records, then as many two-image records: `image` a list of 2 paths);
    val_qa.jsonl (single-image rows), val_multi_qa.jsonl (two-image rows, the question carrying the
    "Image k: <image>" lead), train_video.json and val_video_qa.jsonl (`video`: frame paths);
    tokenizer/, meta.json. Each split has as many pairs and clips as images. With `captions`, train.json
    also holds a caption record after each image's question record ("Describe the image." ->
    `caption`); scenes, questions and the val files are the same bytes as without.
    """
    check_positive("train_images", train_images)
    check_positive("val_images", val_images)
    for name, n in (("train_images", train_images), ("val_images", val_images)):
        if n < 2:
            raise ValueError(f"{name} must be >= 2 (two-image questions pair a split's images), got {n}")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    train = _write_split(root, "train", train_images, seed, captions)
    val = _write_split(root, "val", val_images, seed)
    write_json(root / "train.json", train.singles + train.pairs)
    write_json(root / "train_video.json", train.clips)
    write_jsonl(root / "val_qa.jsonl", val.rows)
    write_jsonl(root / "val_multi_qa.jsonl", val.pair_rows)
    write_jsonl(root / "val_video_qa.jsonl", val.clip_rows)
    everything = [*train.singles, *train.pairs, *train.clips, *val.singles, *val.pairs, *val.clips]
    train_tokenizer(qa_texts(everything), root / "tokenizer")
    counts = {
        "train_images": train_images,
        "val_images": val_images,
        "train_pairs": len(train.pairs),
        "val_pairs": len(val.pairs),
        "train_clips": len(train.clips),
        "val_clips": len(val.clips),
        "train_turns": sum(len(r["types"]) for r in train.singles + train.pairs),
        **({"train_captions": train_images} if captions else {}),
        "val_questions": len(val.rows),
        "val_multi_questions": len(val.pair_rows),
        "val_video_questions": len(val.clip_rows),
    }
    meta = {
        "generator": "shapes-hr",
        "seed": seed,
        "params": {
            "canvas": CANVAS,
            "tower_size": TOWER_SIZE,
            "grid": GRID,
            "colors": {k: list(v) for k, v in COLORS.items()},
            "shapes": list(SHAPES),
            "object_area_px": list(AREA_PX),
            "object_extent_px": {s: [round(2 * half_extent(s, a), 2) for a in AREA_PX] for s in SHAPES},
            "objects_per_scene": [MIN_OBJECTS, MAX_OBJECTS],
            "frames": FRAMES,
            "step_px": STEP_PX,
            "choices": {k: list(v) for k, v in CHOICES.items()},
            **({"captions": True} if captions else {}),
        },
        "counts": counts,
        "answers": {"train": train.answers, "val": val.answers},
    }
    write_json(root / "meta.json", meta, 2)
    return {
        "root": str(root),
        "train_json": str(root / "train.json"),
        "train_video_json": str(root / "train_video.json"),
        "val_qa": str(root / "val_qa.jsonl"),
        "val_multi_qa": str(root / "val_multi_qa.jsonl"),
        "val_video_qa": str(root / "val_video_qa.jsonl"),
        "tokenizer": str(root / "tokenizer"),
        "meta": str(root / "meta.json"),
        **counts,
    }
