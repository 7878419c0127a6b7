"""Shapes-HR world: answers on hand-built scenes, rendering, shapes lost at the tower's 72 px,
balanced answers, record formats, determinism, the CLI."""

import hashlib
import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.conversation_dataset import check_image_placeholders
from data.shapes import POSITIONS, shape_masks
from data.shapes_hr import (
    AREA_PX,
    CANVAS,
    CELL,
    CHOICES,
    COLORS,
    DIRECTIONS,
    FRAMES,
    PAIR_TYPES,
    SINGLE_TYPES,
    STEP_PX,
    TOWER_SIZE,
    AnswerBalancer,
    Clip,
    Obj,
    Scene,
    caption,
    half_extent,
    pair_questions,
    render,
    sample_clip,
    single_questions,
    write_shapes_hr,
)
from data.templates import IMAGE_TOKEN
from data.writers import QA


def at(color: str, shape: str, row: int, col: int, area: float = 72.0) -> Obj:
    """An object centred in grid cell (row, col)."""
    return Obj(color, shape, area, (col + 0.5) * CELL, (row + 0.5) * CELL)


def answers(qas: list[QA]) -> dict[str, str]:
    return {qa.question: qa.answer for qa in qas}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hr") / "world"
    write_shapes_hr(root, train_images=60, val_images=8, seed=3)
    return root


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# -- questions on hand-built scenes -------------------------------------------------------------

def test_single_image_answers_on_a_hand_built_scene():
    scene = Scene((at("red", "square", 0, 0), at("red", "triangle", 1, 1), at("blue", "circle", 2, 2),
                   at("green", "triangle", 0, 2)))
    pools = single_questions(scene)
    assert answers(pools["shape"]) == {"What shape is the object at the top left?": "square",
                                       "What shape is the object at the center?": "triangle",
                                       "What shape is the object at the bottom right?": "circle",
                                       "What shape is the object at the top right?": "triangle"}
    assert answers(pools["color"])["What color is the object at the top right?"] == "green"
    assert answers(pools["count"]) == {"How many circles are there?": "1", "How many squares are there?": "1",
                                       "How many triangles are there?": "2"}
    # negatives keep to colours the scene shows (only the shape can rule them out); no yellow
    assert answers(pools["existence"]) == {
        **{f"Is there a {n} in the image?": "yes" for n in ("red square", "red triangle", "blue circle",
                                                             "green triangle")},
        **{f"Is there a {n} in the image?": "no" for n in ("red circle", "blue square", "blue triangle",
                                                            "green circle", "green square")}}
    # position only where colour alone cannot find the object: the two red ones
    assert answers(pools["position"]) == {"Where is the red square?": "top left",
                                          "Where is the red triangle?": "center"}


def test_caption_lists_every_object_in_reading_order():
    scene = Scene((at("blue", "circle", 2, 2), at("red", "square", 0, 0), at("green", "triangle", 1, 1)))
    assert caption(scene) == "red square top left, green triangle center, blue circle bottom right"


def test_position_falls_back_to_unique_objects_and_skips_repeated_names():
    scene = Scene((at("red", "circle", 0, 0), at("red", "circle", 0, 1), at("blue", "square", 2, 0)))
    assert answers(single_questions(scene)["position"]) == {"Where is the blue square?": "bottom left"}


def test_two_image_answers_on_hand_built_scenes():
    first = Scene((at("red", "square", 0, 0), at("blue", "circle", 1, 1)))
    second = Scene((at("red", "triangle", 0, 0), at("blue", "circle", 2, 2), at("green", "square", 2, 0)))
    pools = pair_questions(first, second)
    # the blue circle is in both; the green square is only in image 2 but colour alone finds it,
    # so image 2's question is about the red triangle (image 1 shows red too)
    assert answers(pools["which_image"]) == {"In which image is the red square?": "1",
                                             "In which image is the red triangle?": "2"}
    assert answers(pools["count_together"]) == {"How many circles are in the two images together?": "2",
                                                "How many squares are in the two images together?": "2",
                                                "How many triangles are in the two images together?": "1"}


def test_balancer_takes_the_least_given_answer():
    balancer, rng = AnswerBalancer({"existence": ("yes", "no")}), np.random.default_rng(0)
    yes, no = QA("q1", "yes", "existence"), QA("q2", "no", "existence")
    picks = [balancer.pick([yes, yes, no], rng).answer for _ in range(6)]
    assert sorted(picks[:2]) == ["no", "yes"] and Counter(picks) == {"yes": 3, "no": 3}
    assert balancer.pick([QA("q3", "maybe", "existence")], rng) is None  # not a choice of the type
    assert [balancer.pick([yes], rng).answer for _ in range(2)] == ["yes", "yes"]  # only yes on offer
    assert balancer.counts["existence"] == {"yes": 5, "no": 3}


# -- rendering and clips ----------------------------------------------------------------------

def test_render_draws_each_object_exactly_where_its_mask_says():
    square = Obj("red", "square", 64.0, 100.0, 60.0)  # half-extent 4: a 9x9 block, x 96..104, y 56..64
    img = render([square])
    red = np.all(img == COLORS["red"], axis=-1)
    ys, xs = np.nonzero(red)
    assert red.sum() == 81 and (xs.min(), xs.max(), ys.min(), ys.max()) == (96, 104, 56, 64)
    assert np.all(img[~red] == 255)
    # parity with drawing every object's mask over the whole canvas (data.shapes.render's way)
    objs = [Obj("blue", "triangle", 90.0, 200.3, 41.7), Obj("yellow", "circle", 50.0, 30.5, 250.2), square]
    ref = np.full((CANVAS, CANVAS, 3), 255, np.uint8)
    yy, xx = np.mgrid[0:CANVAS, 0:CANVAS]
    for o in objs:
        ref[shape_masks(xx - o.x, yy - o.y, half_extent(o.shape, o.area))[o.shape]] = COLORS[o.color]
    assert np.array_equal(render(objs), ref)


def test_equal_area_shapes():
    """Every shape gets the same pixel area for the same `area` (within a pixel's rounding)."""
    for area in AREA_PX:
        counts = [np.all(render([Obj("red", s, area, 144.3, 143.6)]) == COLORS["red"], -1).sum()
                  for s in ("circle", "square", "triangle")]
        assert max(abs(c - area) for c in counts) <= 0.15 * area, counts


def test_clip_frames_move_the_subject_by_the_step():
    clip = Clip((Obj("red", "circle", 72.0, 200.0, 100.0), Obj("red", "square", 72.0, 60.0, 60.0)),
                ("left", "down"), subject=0)
    assert clip.qa == QA("Which way does the red circle move?", "left", "motion")
    centres = []
    for t in range(FRAMES):
        ys, xs = np.nonzero(np.all(render(clip.frame(t)) == COLORS["red"], -1) & (np.arange(CANVAS) > 120)[None, :])
        centres.append((xs.mean(), ys.mean()))
    assert [round(b[0] - a[0], 6) for a, b in itertools.pairwise(centres)] == [-STEP_PX] * (FRAMES - 1)
    assert len({round(c[1], 6) for c in centres}) == 1


@pytest.mark.parametrize("seed", range(6))
def test_sampled_clips_need_the_shape(seed):
    rng = np.random.default_rng(seed)
    for direction in DIRECTIONS:
        clip = sample_clip(direction, rng)
        subject = clip.objects[clip.subject]
        assert clip.qa.answer == direction == clip.directions[clip.subject]
        assert [o.name for o in clip.objects].count(subject.name) == 1
        # another object of the subject's colour, another shape, moving another way
        assert any(o.color == subject.color and o.shape != subject.shape and d != direction
                   for o, d in zip(clip.objects, clip.directions))
        for t in range(FRAMES):
            frame = clip.frame(t)
            assert all(0 < o.x - half_extent(o.shape, o.area) and o.x + half_extent(o.shape, o.area) < CANVAS
                       and 0 < o.y - half_extent(o.shape, o.area) and o.y + half_extent(o.shape, o.area) < CANVAS
                       for o in frame)
            assert all(max(abs(a.x - b.x), abs(a.y - b.y)) > 20 for a, b in itertools.combinations(frame, 2))


# -- the premise: shape lost at the tower's size, colour kept -----------------------------------

CROP = 48  # a window around the object, a multiple of the 4x shrink, so shrinking it is shrinking the canvas


def _shrunk(img: np.ndarray) -> np.ndarray:
    side = img.shape[0] * TOWER_SIZE // CANVAS
    return np.asarray(Image.fromarray(img).resize((side, side), Image.BILINEAR)).astype(float)


def _closest(target: np.ndarray, shape: str, color: str, shrink: bool) -> float:
    """The smallest peak pixel difference between `target` and any `shape` the world could draw near
    it (area across the world's range, centre offsets of up to 1 px across and 3 px down/up), as a
    fraction of the target's own peak contrast with the background."""
    view = _shrunk if shrink else (lambda a: a.astype(float))
    t, background = view(target), view(np.full_like(target, 255))
    contrast = np.abs(t - background).max()
    best = np.inf
    for area in np.linspace(*AREA_PX, 7):
        for dx, dy in itertools.product(np.arange(-1, 1.01, 0.5), np.arange(-3, 3.01, 0.5)):
            other = view(render([Obj(color, shape, area, CROP / 2 + 0.3 + dx, CROP / 2 - 0.4 + dy)], CROP))
            best = min(best, np.abs(other - t).max() / contrast)
    return best


@pytest.mark.parametrize("shape, other", [("triangle", "square"), ("square", "triangle"), ("circle", "square")])
def test_shapes_are_indistinguishable_at_the_tower_size(shape, other):
    """Shrunk 4x (PIL bilinear, 288 -> 72 px) a triangle is, to within 20% of its contrast at every
    pixel, a square the world could have drawn; at full size no such square comes closer than the
    full contrast. Colour survives: the nearest object of another colour stays far."""
    target = render([Obj("red", shape, 72.0, CROP / 2 + 0.3, CROP / 2 - 0.4)], CROP)
    full, small = _closest(target, other, "red", False), _closest(target, other, "red", True)
    assert full == pytest.approx(1.0)
    assert small < 0.2
    assert _closest(target, shape, "green", True) > 0.5


# -- the written world --------------------------------------------------------------------------

def test_layout_and_formats(world):
    meta = json.loads((world / "meta.json").read_text())
    assert meta["generator"] == "shapes-hr" and meta["seed"] == 3
    assert meta["params"]["canvas"] == 288 and meta["params"]["tower_size"] == 72
    assert meta["params"]["object_extent_px"]["square"] == [round(2 * (48 / 4) ** 0.5, 2), round(2 * (96 / 4) ** 0.5, 2)]
    records = json.loads((world / "train.json").read_text())
    singles = [r for r in records if isinstance(r["image"], str)]
    pairs = [r for r in records if isinstance(r["image"], list)]
    c = meta["counts"]
    assert len(singles) == c["train_images"] == 60 and len(pairs) == c["train_pairs"] == 60
    assert not any("video" in r for r in records)
    check_image_placeholders(records, world / "train.json")  # the training reader's own check
    for r in singles:
        assert r["conversations"][0]["value"].startswith(f"{IMAGE_TOKEN}\n") and set(r["types"]) <= set(SINGLE_TYPES)
    for r in pairs:
        first = r["conversations"][0]["value"]
        assert first.startswith(f"Image 1: {IMAGE_TOKEN}\nImage 2: {IMAGE_TOKEN}\n") and first.count(IMAGE_TOKEN) == 2
        assert sum(t["value"].count(IMAGE_TOKEN) for t in r["conversations"]) == 2 == len(set(r["image"]))
        assert set(r["types"]) == set(PAIR_TYPES)
    for r in records:
        assert len(r["types"]) * 2 == len(r["conversations"])
        assert [t["from"] for t in r["conversations"]] == ["human", "gpt"] * len(r["types"])
    for r in singles[:3] + pairs[:3]:
        for path in [r["image"]] if isinstance(r["image"], str) else r["image"]:
            assert Image.open(world / path).size == (CANVAS, CANVAS)

    clips = json.loads((world / "train_video.json").read_text())
    assert len(clips) == c["train_clips"] == 60
    for r in clips:
        assert set(r) == {"id", "video", "conversations", "types"} and r["types"] == ["motion"]
        assert len(r["video"]) == FRAMES and all((world / p).is_file() for p in r["video"])
        assert r["conversations"][0]["value"].startswith(f"{IMAGE_TOKEN}\nWhich way does the ")
        assert sum(t["value"].count(IMAGE_TOKEN) for t in r["conversations"]) == 1

    val = read_jsonl(world / "val_qa.jsonl")
    assert len(val) == c["val_questions"] == 8 * len(SINGLE_TYPES)
    assert all(set(r) == {"id", "image", "question", "answer", "type"} and IMAGE_TOKEN not in r["question"]
               for r in val)
    multi = read_jsonl(world / "val_multi_qa.jsonl")
    assert len(multi) == c["val_multi_questions"] == 8 * len(PAIR_TYPES)
    assert all(len(r["image"]) == 2 == r["question"].count(IMAGE_TOKEN) for r in multi)
    video = read_jsonl(world / "val_video_qa.jsonl")
    assert len(video) == c["val_video_questions"] == 8
    assert all(set(r) == {"id", "video", "question", "answer", "type"} and len(r["video"]) == FRAMES for r in video)
    assert (world / "tokenizer" / "tokenizer.json").is_file()


def test_answers_are_right_for_the_written_scenes(world):
    """Re-derive the written answers from the pixels: each single-image shape/colour question's
    object is found in its cell, its colour read off its pixels, its shape from the share of its
    bounding box it fills."""
    records = json.loads((world / "train.json").read_text())
    checked = 0
    for r in records[:20]:
        img = np.asarray(Image.open(world / r["image"]))
        for human, gpt, qtype in zip(r["conversations"][0::2], r["conversations"][1::2], r["types"]):
            if qtype not in ("color", "shape"):
                continue
            position = human["value"].rsplit("at the ", 1)[1].rstrip("?")
            row, col = next(rc for rc, name in POSITIONS.items() if name == position)
            cell = img[row * CELL:(row + 1) * CELL, col * CELL:(col + 1) * CELL]
            ink = ~np.all(cell == 255, -1)
            color = next(n for n, v in COLORS.items() if np.all(cell[ink][0] == v))
            ys, xs = np.nonzero(ink)
            fill = ink.sum() / ((np.ptp(xs) + 1) * (np.ptp(ys) + 1))  # square 1, circle < 1 (corners), triangle ~1/2
            shape = "square" if fill == 1 else "circle" if fill > 0.65 else "triangle"
            assert gpt["value"] == (color if qtype == "color" else shape), (r["id"], human["value"])
            checked += 1
    assert checked >= 20


def test_answers_are_balanced_per_type(world):
    """Chance is one over a type's choices: a constant answer scores 1/k, give or take 5 points."""
    records = json.loads((world / "train.json").read_text()) + json.loads((world / "train_video.json").read_text())
    given: dict[str, Counter] = {}
    for r in records:
        for gpt, qtype in zip(r["conversations"][1::2], r["types"]):
            given.setdefault(qtype, Counter())[gpt["value"]] += 1
    assert set(given) == set(CHOICES)
    for qtype, counts in given.items():
        assert set(counts) == set(CHOICES[qtype]), qtype
        total, k = sum(counts.values()), len(CHOICES[qtype])
        assert max(counts.values()) / total <= 1 / k + 0.05, (qtype, counts)
        assert min(counts.values()) / total >= 1 / k - 0.05, (qtype, counts)


def test_same_seed_same_bytes_and_val_independent_of_train(tmp_path):
    a = write_shapes_hr(tmp_path / "a", train_images=4, val_images=3, seed=5)
    write_shapes_hr(tmp_path / "b", train_images=4, val_images=3, seed=5)
    write_shapes_hr(tmp_path / "c", train_images=6, val_images=3, seed=5)
    write_shapes_hr(tmp_path / "d", train_images=4, val_images=3, seed=6)
    da, db, dc, dd = (tree_digest(tmp_path / k) for k in "abcd")
    assert da == db and len(da) > 4 * (1 + FRAMES)
    val_files = [k for k in da if k.startswith(("val_", "images/val/"))]
    assert val_files and all(dc[k] == da[k] for k in val_files)  # more train images, same val
    assert da["train.json"] != dd["train.json"] and da["images/train/000000.png"] != dd["images/train/000000.png"]
    assert a["train_images"] == 4 and Path(a["meta"]).is_file()


def test_cli_writes_the_world_and_rejects_a_split_of_one(tmp_path, capsys):
    from train.cli import main

    main(["data", "shapes-hr", "--out", str(tmp_path / "w"), "--train-images", "3", "--val-images", "2",
          "--seed", "1"])
    summary = json.loads(capsys.readouterr().out)
    assert summary["train_pairs"] == summary["train_clips"] == 3 and summary["val_multi_questions"] == 4
    assert json.loads((tmp_path / "w" / "meta.json").read_text())["seed"] == 1
    with pytest.raises(ValueError, match=r"^val_images must be >= 2 \(two-image questions pair a split's images\)"):
        main(["data", "shapes-hr", "--out", str(tmp_path / "x"), "--train-images", "3", "--val-images", "1"])


def test_captions_follow_their_question_records_and_change_nothing_else(tmp_path):
    from train.cli import main

    write_shapes_hr(tmp_path / "plain", train_images=5, val_images=2, seed=4)
    main(["data", "shapes-hr", "--out", str(tmp_path / "cap"), "--train-images", "5", "--val-images", "2",
          "--seed", "4", "--captions"])
    plain, cap = (json.loads((tmp_path / k / "train.json").read_text()) for k in ("plain", "cap"))
    captions = [r for r in cap if r["types"] == ["caption"]]
    assert [r for r in cap if r["types"] != ["caption"]] == plain and len(captions) == 5
    for k, r in enumerate(captions):
        question_record = cap[cap.index(r) - 1]
        assert r["id"] == f"{question_record['id']}-caption" == f"train-{k:06d}-caption"
        assert r["image"] == question_record["image"]
        assert r["conversations"][0]["value"] == f"{IMAGE_TOKEN}\nDescribe the image."
        # the caption agrees with every colour and shape answer of the image's questions
        described = {}  # position -> (colour, shape)
        for part in r["conversations"][1]["value"].split(", "):
            color, shape, position = part.split(" ", 2)
            described[position] = (color, shape)
        for human, gpt, qtype in zip(question_record["conversations"][0::2], question_record["conversations"][1::2],
                                     question_record["types"]):
            if qtype in ("color", "shape"):
                color, shape = described[human["value"].rsplit("at the ", 1)[1].rstrip("?")]
                assert gpt["value"] == (color if qtype == "color" else shape)
    plain_files, cap_files = tree_digest(tmp_path / "plain"), tree_digest(tmp_path / "cap")
    assert {k: v for k, v in cap_files.items() if k.startswith(("images/", "val_"))} == \
        {k: v for k, v in plain_files.items() if k.startswith(("images/", "val_"))}
    meta = json.loads((tmp_path / "cap" / "meta.json").read_text())
    assert meta["params"]["captions"] is True and meta["counts"]["train_captions"] == 5


def test_cli_user_error_is_one_line_from_the_shell(tmp_path):
    from tests.cli_run import chimera, plain_error

    proc = chimera("data", "shapes-hr", "--out", tmp_path / "w", "--train-images", "1")
    assert plain_error(proc, "data") == "train_images must be >= 2 (two-image questions pair a split's images), got 1"
    assert not (tmp_path / "w").exists()  # refused before anything is written


# -- the experiment configs ---------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name, train, val", [
    ("llava_next_shapes_hr_tiny", ["train.json"], "val_qa.jsonl"),
    ("llava_shapes_hr_tiny", ["train.json"], "val_qa.jsonl"),
    ("llava_shapes_hr_video_tiny", ["train.json", "train_video.json"], "val_video_qa.jsonl")])
def test_configs_train_two_steps_on_a_tiny_world(tmp_path, name, train, val):
    """The shipped configs as they are (tower untrained, no file it needs): they parse, train two
    steps with a finite loss on single- and two-image records (and clips) and validate by generation."""
    import csv

    import yaml

    from train.cli import main

    root = tmp_path / "world"
    write_shapes_hr(root, train_images=4, val_images=2, seed=0)
    cfg = yaml.safe_load(open(f"configs/experiments/{name}.yaml"))
    cfg["trainer"].update({"max_steps": 2, "val_check_interval": 2, "log_every_n_steps": 1,
                           "enable_progress_bar": False, "enable_model_summary": False})
    cfg["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path)
    model = cfg["model"]["init_args"]["model"]["init_args"]
    model["vision"]["init_args"]["pretrained"] = None
    model["language"]["init_args"]["tokenizer"] = str(root / "tokenizer")
    data = cfg["data"]["init_args"]
    assert data["train_json"] == (f"runs/data/shapes-hr/{train[0]}" if len(train) == 1 else
                                  [f"runs/data/shapes-hr/{f}" for f in train])
    assert data["val_qa"] == f"runs/data/shapes-hr/{val}"
    data.update({"train_json": [str(root / f) for f in train] if len(train) > 1 else str(root / train[0]),
                 "val_qa": str(root / val), "batch_size": 4, "eval_batch_size": 4, "num_workers": 0})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    main(["fit", "--config", str(path)])
    run = tmp_path / name / "version_0"
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert [r["val/acc"] for r in rows if r.get("val/acc")]
    if val == "val_video_qa.jsonl":  # the clips' motion questions were answered
        assert [r["val/acc_motion"] for r in rows if r.get("val/acc_motion")]
    assert not any(float(r["train/dropped_samples"] or 0) for r in rows)


def test_anyres_config_reads_the_canvas_at_full_resolution():
    """The any-resolution config's layout: a 288 px scene is 16 full-resolution tiles (the canvas is
    its own pinpoint), whose 36x36 feature map anyres_max_4 halves: 81 + 18 x 19 = 423 positions."""
    import yaml

    from models.anyres import AnyResLayout

    model = yaml.safe_load(open("configs/experiments/llava_next_shapes_hr_tiny.yaml"))["model"]["init_args"]["model"]
    args, vision = model["init_args"], model["init_args"]["vision"]["init_args"]["model_config"]["vision_cfg"]
    assert vision["image_size"] == TOWER_SIZE
    layout = AnyResLayout(vision["image_size"], vision["image_size"] // vision["patch_size"],
                          tuple(map(tuple, args["image_grid_pinpoints"])), args["anyres_max_tiles"])
    assert layout.canvas((CANVAS, CANVAS)) == (CANVAS, CANVAS) and layout.num_views((CANVAS, CANVAS)) == 17
    assert layout.feature_grid((CANVAS, CANVAS)) == (18, 18) and layout.num_tokens((CANVAS, CANVAS)) == 423
    base = yaml.safe_load(open("configs/experiments/llava_shapes_hr_tiny.yaml"))["model"]["init_args"]["model"]
    assert "image_grid_pinpoints" not in base["init_args"]
    assert {k: v for k, v in base["init_args"].items()} == {k: v for k, v in args.items() if not k.startswith(
        ("image_grid_pinpoints", "anyres_max_tiles"))}  # otherwise the same model


def test_video_config_is_the_single_view_model_on_images_and_clips():
    """llava_shapes_hr_video_tiny.yaml: llava_shapes_hr_tiny.yaml's model and training, plus clips (pooled
    frames of 25 tokens: 100 positions a clip) in its training set and its validation on them."""
    import yaml

    from models.video_pool import pooled_side

    video = yaml.safe_load(open("configs/experiments/llava_shapes_hr_video_tiny.yaml"))
    base = yaml.safe_load(open("configs/experiments/llava_shapes_hr_tiny.yaml"))
    model = video["model"]["init_args"]["model"]["init_args"]
    base_model = base["model"]["init_args"]["model"]["init_args"]
    assert {k: v for k, v in model.items() if k != "video_pool"} == base_model and model["video_pool"] == 2
    vision = model["vision"]["init_args"]["model_config"]["vision_cfg"]
    assert FRAMES * pooled_side(vision["image_size"] // vision["patch_size"], 2, "bilinear") ** 2 == 4 * 25
    assert {k: v for k, v in video["model"]["init_args"].items() if k != "model"} == \
        {k: v for k, v in base["model"]["init_args"].items() if k != "model"}
    data = video["data"]["init_args"]
    assert data["train_json"] == ["runs/data/shapes-hr/train.json", "runs/data/shapes-hr/train_video.json"]
    assert data["val_qa"] == "runs/data/shapes-hr/val_video_qa.jsonl"
    assert {k: v for k, v in data.items() if k not in ("train_json", "val_qa", "max_val_samples")} == \
        {k: v for k, v in base["data"]["init_args"].items() if k not in ("train_json", "val_qa", "max_val_samples")}
