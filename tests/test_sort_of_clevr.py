"""Sort-of-CLEVR: pixels, geometry, ground-truth answers, file formats and determinism."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.sort_of_clevr import (
    COLORS,
    IMAGE_SIZE,
    NON_RELATIONAL,
    QUESTION_TYPES,
    RELATIONAL,
    Obj,
    Scene,
    answer,
    ask,
    caption,
    render,
    sample_scene,
    write_sort_of_clevr,
)
from data.writers import stream_rng

WHITE = (255, 255, 255)


def scene(*objs: tuple[str, int, int]) -> Scene:
    """Hand-built scene: (shape, cx, cy) per colour, in COLORS order."""
    return Scene(tuple(Obj(c, s, x, y) for c, (s, x, y) in zip(COLORS, objs)))


# red sq (10,10), green ci (30,10), blue ci (60,60), orange sq (40,50), gray sq (10,60), yellow sq (65,20)
HAND = scene(
    ("square", 10, 10),
    ("circle", 30, 10),
    ("circle", 60, 60),
    ("square", 40, 50),
    ("square", 10, 60),
    ("square", 65, 20),
)


def test_constants():
    assert list(COLORS) == ["red", "green", "blue", "orange", "gray", "yellow"]
    assert COLORS["orange"] == (255, 156, 0) and COLORS["gray"] == (128, 128, 128)
    assert NON_RELATIONAL == ("shape", "horizontal", "vertical")
    assert QUESTION_TYPES == NON_RELATIONAL + RELATIONAL == NON_RELATIONAL + ("closest", "furthest", "count")


def test_render_pixels():
    img = render(HAND)
    assert img.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and img.dtype == np.uint8
    for o in HAND.objects:
        assert tuple(img[o.cy, o.cx]) == COLORS[o.color]  # indexed [row=y, col=x]
        assert tuple(img[o.cy, o.cx + 5]) == COLORS[o.color]  # edge of both shapes
        assert tuple(img[o.cy, o.cx - 6]) == WHITE  # just outside
        corner = tuple(img[o.cy + 5, o.cx + 5])
        assert corner == (COLORS[o.color] if o.shape == "square" else WHITE)
    assert tuple(img[35, 70]) == WHITE and tuple(img[0, 74]) == WHITE
    red = np.all(img == COLORS["red"], axis=-1)
    assert red.sum() == 121 and red[5:16, 5:16].all()  # 11x11 square at (10, 10)
    green = np.all(img == COLORS["green"], axis=-1)
    assert green.sum() == 81  # lattice points with x^2 + y^2 <= 25


def test_scenes_never_overlap_and_stay_inside():
    rng = np.random.default_rng(123)
    for _ in range(300):
        s = sample_scene(rng)
        assert [o.color for o in s.objects] == list(COLORS)
        assert all(5 <= o.cx < 70 and 5 <= o.cy < 70 for o in s.objects)
        for i, a in enumerate(s.objects):
            for b in s.objects[:i]:
                assert max(abs(a.cx - b.cx), abs(a.cy - b.cy)) > 10
        img = render(s)  # no pixel overwritten: every object keeps its full area
        for o in s.objects:
            assert np.all(img == COLORS[o.color], axis=-1).sum() == (121 if o.shape == "square" else 81)


def test_non_relational_answers():
    assert answer(HAND, "red", "shape") == "square"
    assert answer(HAND, "green", "shape") == "circle"
    assert answer(HAND, "red", "horizontal") == "left"
    assert answer(HAND, "orange", "horizontal") == "right"
    assert answer(HAND, "red", "vertical") == "top"
    assert answer(HAND, "blue", "vertical") == "bottom"
    edge = scene(
        ("circle", 37, 38),
        ("circle", 38, 37),
        ("circle", 5, 5),
        ("circle", 69, 69),
        ("circle", 5, 69),
        ("circle", 69, 5),
    )
    assert [answer(edge, c, "horizontal") for c in ("red", "green")] == ["left", "right"]  # 37 < 37.5 <= 38
    assert [answer(edge, c, "vertical") for c in ("red", "green")] == ["bottom", "top"]


def test_relational_answers():
    assert answer(HAND, "red", "closest") == "circle"  # green at d^2 = 400
    assert answer(HAND, "red", "furthest") == "circle"  # blue at d^2 = 5000
    assert answer(HAND, "blue", "closest") == "square"  # orange at d^2 = 500
    assert answer(HAND, "blue", "furthest") == "square"  # red at d^2 = 5000
    assert answer(HAND, "yellow", "closest") == "circle"  # green at d^2 = 1325
    assert answer(HAND, "yellow", "furthest") == "square"  # gray at d^2 = 4625
    assert answer(HAND, "red", "count") == "4"  # four squares, itself included
    assert answer(HAND, "green", "count") == "2"


def test_ties_go_to_earlier_color():
    # gray at (40, 40): red (square) and green (circle) both at d^2 = 400
    s = scene(
        ("square", 20, 40),
        ("circle", 60, 40),
        ("circle", 40, 5),
        ("circle", 5, 5),
        ("circle", 40, 40),
        ("circle", 70, 70),
    )
    assert answer(s, "gray", "closest") == "square"


def test_answer_rejects_unknown_inputs():
    with pytest.raises(ValueError, match="question type"):
        answer(HAND, "red", "size")
    with pytest.raises(ValueError, match="color"):
        answer(HAND, "purple", "shape")


def test_ask_matches_answer():
    qas = ask(HAND, np.random.default_rng(0), n_nonrel=10, n_rel=10)
    assert [qa.type in NON_RELATIONAL for qa in qas] == [True] * 10 + [False] * 10
    templates = {
        "shape": "What is the shape of the {} object?",
        "horizontal": "Is the {} object on the left or right of the image?",
        "vertical": "Is the {} object on the top or bottom of the image?",
        "closest": "What is the shape of the object closest to the {} object?",
        "furthest": "What is the shape of the object furthest from the {} object?",
        "count": "How many objects have the same shape as the {} object?",
    }
    for qa in qas:
        (color,) = [c for c in COLORS if qa.question == templates[qa.type].format(c)]
        assert qa.answer == answer(HAND, color, qa.type)


def test_answer_classes_roughly_balanced():
    rng = np.random.default_rng(7)
    scenes = [sample_scene(rng) for _ in range(500)]
    for qtype, positive in (("shape", "circle"), ("horizontal", "left"), ("vertical", "top")):
        frac = np.mean([answer(s, c, qtype) == positive for s in scenes for c in COLORS])
        assert 0.45 < frac < 0.55, (qtype, frac)


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def small(out: Path, seed: int = 0) -> dict:
    return write_sort_of_clevr(out, train_images=4, val_images=3, seed=seed, questions_per_image=2)


def test_deterministic(tmp_path):
    small(tmp_path / "a")
    small(tmp_path / "b")
    small(tmp_path / "c", seed=1)
    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert a == b
    assert a.keys() == c.keys()
    assert a["train.json"] != c["train.json"] and a["images/val/000000.png"] != c["images/val/000000.png"]


def test_written_files(tmp_path):
    summary = small(tmp_path)
    assert summary["train_images"] == 4 and summary["val_questions"] == 3 * 4
    assert sorted(p.name for p in (tmp_path / "images" / "train").iterdir()) == [f"{i:06d}.png" for i in range(4)]

    # images are exactly the rendered scenes of the train stream
    first = np.asarray(Image.open(tmp_path / "images/train/000000.png"))
    assert np.array_equal(first, render(sample_scene(stream_rng(0, "train"))))

    valid = {"shape": {"circle", "square"}, "horizontal": {"left", "right"}, "vertical": {"top", "bottom"},
             "closest": {"circle", "square"}, "furthest": {"circle", "square"}, "count": {str(i) for i in range(1, 7)}}
    for split, n in (("train", 4), ("val", 3)):
        records = json.loads((tmp_path / f"{split}.json").read_text())
        assert [r["id"] for r in records] == [f"{split}-{i:06d}" for i in range(n)]
        for r in records:
            assert (tmp_path / r["image"]).is_file()
            conv = r["conversations"]
            assert [t["from"] for t in conv] == ["human", "gpt"] * 4
            assert conv[0]["value"].startswith("<image>\n")
            assert sum(t["value"].count("<image>") for t in conv) == 1
            assert sorted(t in NON_RELATIONAL for t in r["types"]) == [False, False, True, True]
            for qtype, reply in zip(r["types"], conv[1::2]):
                assert reply["value"] in valid[qtype]

    val = json.loads((tmp_path / "val.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "val_qa.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows[3:5]] == ["val-000000-03", "val-000001-00"]
    for row in rows:
        assert set(row) == {"id", "image", "question", "answer", "type"}
        assert (tmp_path / row["image"]).is_file()
        rec = val[int(row["id"].split("-")[1])]
        k = int(row["id"].split("-")[2])
        assert rec["image"] == row["image"] and rec["types"][k] == row["type"]
        assert rec["conversations"][2 * k]["value"].removeprefix("<image>\n") == row["question"]
        assert rec["conversations"][2 * k + 1]["value"] == row["answer"]

    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["generator"] == "sort_of_clevr" and meta["seed"] == 0
    assert meta["counts"] == {"train_images": 4, "val_images": 3, "train_questions": 16, "val_questions": 12}
    assert (tmp_path / "tokenizer" / "tokenizer.json").is_file()


def test_val_independent_of_train_size(tmp_path):
    write_sort_of_clevr(tmp_path / "a", train_images=2, val_images=2, questions_per_image=1)
    write_sort_of_clevr(tmp_path / "b", train_images=5, val_images=2, questions_per_image=1)
    assert (tmp_path / "a/val.json").read_bytes() == (tmp_path / "b/val.json").read_bytes()


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"train_images": 0}, "train_images"),
        ({"train_images": 2.5}, "train_images"),
        ({"val_images": -1}, "val_images"),
        ({"questions_per_image": 0}, "questions_per_image"),
        ({"seed": -3}, "seed"),
        ({"shards": True, "shard_size": 0}, "shard_size"),
        ({"shards": "yes"}, "shards"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        write_sort_of_clevr(tmp_path, **{"train_images": 1, "val_images": 1, **kwargs})


def test_caption_lists_every_object():
    assert caption(HAND) == ("red square top left, green circle top left, blue circle bottom right, "
                             "orange square bottom right, gray square bottom left, yellow square top right")


def test_caption_shards_hold_the_scenes(tmp_path):
    import io
    import tarfile

    plain = small(tmp_path / "plain")
    summary = write_sort_of_clevr(tmp_path / "s", train_images=4, val_images=3, questions_per_image=2,
                                  shards=True, shard_size=3)
    assert "shards" not in plain and not (tmp_path / "plain/shards").exists()
    # shards change nothing else: same images, questions and tokenizer
    with_shards = {k: v for k, v in files(tmp_path / "s").items() if not k.startswith("shards/") and k != "meta.json"}
    assert with_shards == {k: v for k, v in files(tmp_path / "plain").items() if k != "meta.json"}
    assert [Path(p).name for p in summary["shards"]["train"]] == ["train-000000.tar", "train-000001.tar"]
    assert summary["train_shards"] == 2 and summary["val_shards"] == 1

    for split, n in (("train", 4), ("val", 3)):
        members: dict[str, bytes] = {}
        for shard in sorted((tmp_path / "s/shards").glob(f"{split}-*.tar")):
            with tarfile.open(shard) as tar:
                members.update({m.name: tar.extractfile(m).read() for m in tar.getmembers()})
        assert sorted(members) == sorted(f"{split}-{i:06d}.{ext}" for i in range(n) for ext in ("json", "png", "txt"))
        rng = stream_rng(0, split)  # replay the split's stream: the scene behind each image
        for i in range(n):
            s = sample_scene(rng)
            qas = ask(s, rng, 2, 2)
            rng.permutation(len(qas))
            key = f"{split}-{i:06d}"
            assert members[f"{key}.png"] == (tmp_path / f"s/images/{split}/{i:06d}.png").read_bytes()
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(members[f"{key}.png"]))), render(s))
            objs = json.loads(members[f"{key}.json"])["objects"]
            assert [(o["color"], o["shape"], o["cx"], o["cy"]) for o in objs] == [
                (o.color, o.shape, o.cx, o.cy) for o in s.objects]
            words = [part.split() for part in members[f"{key}.txt"].decode().split(", ")]
            assert len(words) == 6
            for (color, shape, vertical, horizontal), o in zip(words, s.objects):
                assert (color, shape) == (o.color, o.shape)
                assert vertical == ("top" if o.cy < IMAGE_SIZE / 2 else "bottom")
                assert horizontal == ("left" if o.cx < IMAGE_SIZE / 2 else "right")
                assert vertical == answer(s, color, "vertical") and horizontal == answer(s, color, "horizontal")


def test_caption_records_follow_their_images(tmp_path):
    plain = small(tmp_path / "plain")
    summary = write_sort_of_clevr(tmp_path / "c", train_images=4, val_images=3, questions_per_image=2, captions=True)
    assert "train_captions" not in plain and summary["train_captions"] == 4
    assert summary["train_questions"] == plain["train_questions"] == 16
    # the images and the eval questions are unchanged; only the conversation files (and the
    # tokenizer, which also learns the caption text) gain the caption records
    c, p = files(tmp_path / "c"), files(tmp_path / "plain")
    for name in [k for k in p if k.startswith("images/")] + ["val_qa.jsonl"]:
        assert c[name] == p[name], name
    for split, n in (("train", 4), ("val", 3)):
        records = json.loads(c[f"{split}.json"])
        questions = json.loads(p[f"{split}.json"])
        assert records[0::2] == questions  # each image's question record, then its caption record
        rng = stream_rng(0, split)
        for i, rec in enumerate(records[1::2]):
            s = sample_scene(rng)
            rng.permutation(len(ask(s, rng, 2, 2)))
            assert rec == {"id": f"{split}-{i:06d}-caption", "image": f"images/{split}/{i:06d}.png", "types": ["caption"],
                           "conversations": [{"from": "human", "value": "<image>\nDescribe the image."},
                                             {"from": "gpt", "value": caption(s)}]}
    meta = json.loads(c["meta.json"])
    assert meta["params"]["captions"] is True and meta["counts"]["train_captions"] == 4
    with pytest.raises(ValueError, match="captions"):
        write_sort_of_clevr(tmp_path / "bad", train_images=1, val_images=1, captions="yes")


def test_cli_writes_caption_records(tmp_path, capsys):
    from train.cli import main

    main(["data", "sort-of-clevr", "--out", str(tmp_path), "--train-images", "2", "--val-images", "1",
          "--questions-per-image", "1", "--captions"])
    records = json.loads((tmp_path / "train.json").read_text())
    assert [r["id"] for r in records] == ["train-000000", "train-000000-caption", "train-000001", "train-000001-caption"]
    assert '"train_captions": 2' in capsys.readouterr().out
