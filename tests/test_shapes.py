"""Shapes world: rendering, captions, VQA answers, POPE probes, shards, determinism."""

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from data.shapes import (
    DEFAULT_COLORS,
    POPE_SPLITS,
    VQA_TYPES,
    Obj,
    Scene,
    World,
    all_questions,
    ask,
    caption,
    object_stats,
    pope_probes,
    render,
    sample_scene,
    write_shapes,
)

WORLD = World()
WHITE = (255, 255, 255)
# red circle small top-left, red circle large center, blue triangle large bottom-right, green square small top-right
HAND = Scene((
    Obj("red", "circle", "large", 1, 1),
    Obj("blue", "triangle", "large", 2, 2),
    Obj("red", "circle", "small", 0, 0),
    Obj("green", "square", "small", 0, 2),
))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    return out, write_shapes(out, train_images=60, val_images=12, shard_size=25)


def test_render_pixels():
    img = render(HAND, WORLD)
    assert img.shape == (72, 72, 3) and img.dtype == np.uint8
    for o in HAND.objects:
        cy, cx = 24 * o.row + 11, 24 * o.col + 11
        assert tuple(img[cy, cx]) == DEFAULT_COLORS[o.color]
        assert tuple(img[24 * o.row, 24 * o.col]) == WHITE  # cell corner is background
    assert tuple(img[11, 35]) == WHITE  # empty cell
    red = np.all(img == DEFAULT_COLORS["red"], axis=-1)
    assert red[24:48, 24:48].sum() > 3 * red[0:24, 0:24].sum() > 0  # large vs small
    blue = np.all(img == DEFAULT_COLORS["blue"], axis=-1)[48:72, 48:72]
    assert blue[3, 11] and not blue[3, 3] and blue[20, 3]  # triangle: apex up, wide base
    green = np.all(img == DEFAULT_COLORS["green"], axis=-1)[0:24, 48:72]
    assert green[7:17, 7:17].all() and green.sum() == 100  # 10x10 square: half-extent 4.8 around 11.5


def test_scene_sorted_and_validated():
    assert [(o.row, o.col) for o in HAND.objects] == [(0, 0), (0, 2), (1, 1), (2, 2)]
    with pytest.raises(ValueError, match="distinct cells"):
        Scene((Obj("red", "circle", "small", 0, 0), Obj("blue", "square", "small", 0, 0)))


def test_caption_hand_built():
    assert caption(HAND) == (
        "A small red circle at the top left, a small green square at the top right, "
        "a large red circle at the center and a large blue triangle at the bottom right."
    )
    one = Scene((Obj("orange", "triangle", "small", 1, 0),))
    assert caption(one) == "A small orange triangle at the middle left."
    two = Scene((Obj("orange", "circle", "large", 2, 1), Obj("blue", "square", "small", 0, 1)))
    assert caption(two) == "A small blue square at the top middle and a large orange circle at the bottom middle."


def test_captions_mention_exactly_the_objects():
    pattern = re.compile(r"(?:A|a|an) (small|large) (\w+) (\w+) at the ([a-z ]+?)(?:,| and |\.$)")
    rng = np.random.default_rng(3)
    for _ in range(200):
        s = sample_scene(WORLD, rng)
        text = caption(s)
        mentioned = Counter(m.groups() for m in pattern.finditer(text))
        assert mentioned == Counter((o.size, o.color, o.shape, o.position) for o in s.objects), text


def test_sampled_scenes_respect_config():
    colors = {"red": (255, 0, 0), "blue": (0, 0, 255)}
    world = World(min_objects=2, max_objects=4, colors=colors, shapes=["circle", "cross"])
    rng = np.random.default_rng(0)
    counts = Counter(len(sample_scene(world, rng).objects) for _ in range(300))
    assert set(counts) == {2, 3, 4}
    assert world.objects == ("red circle", "red cross", "blue circle", "blue cross")


def test_vqa_answers_hand_built():
    qa = {q.question: (q.answer, q.type) for q in all_questions(HAND, WORLD)}
    assert qa["What color is the triangle at the bottom right?"] == ("blue", "color")
    assert qa["What color is the circle at the center?"] == ("red", "color")
    assert qa["What shape is the object at the top right?"] == ("square", "shape")
    assert qa["How many objects are there?"] == ("4", "count")
    assert qa["How many red objects are there?"] == ("2", "count")
    assert qa["How many yellow objects are there?"] == ("0", "count")
    assert qa["Where is the blue triangle?"] == ("bottom right", "position")
    assert qa["Where is the green square?"] == ("top right", "position")
    assert "Where is the red circle?" not in qa  # two red circles: ambiguous, never asked
    assert qa["Is there a green square in the image?"] == ("yes", "existence")
    assert qa["Is there an orange circle in the image?"] == ("no", "existence")
    assert qa["Is there a red square in the image?"] == ("no", "existence")
    assert sum(t == "existence" for _, t in qa.values()) == len(WORLD.objects)


def test_ask_samples_valid_questions():
    truth = {q.question: q for q in all_questions(HAND, WORLD)}
    seen = Counter()
    for seed in range(30):
        qas = ask(HAND, WORLD, np.random.default_rng(seed))
        assert all(truth[q.question] == q for q in qas)
        types = Counter(q.type for q in qas)
        assert types == {"color": 1, "shape": 1, "count": 1, "position": 1, "existence": 2}
        assert sorted(q.answer for q in qas if q.type == "existence") == ["no", "yes"]
        seen.update(q.question for q in qas if q.type == "count")
    assert seen["How many objects are there?"] > 5 and len(seen) > 3  # both count forms appear


def test_pope_sampling_strategies():
    rng = np.random.default_rng(0)
    stats = object_stats([sample_scene(WORLD, rng) for _ in range(400)], WORLD)
    idx = {n: i for i, n in enumerate(stats.objects)}
    freq = {"random": [], "popular": []}
    cooc = {"random": [], "adversarial": []}
    same_color = {"random": [], "adversarial": []}
    for _ in range(150):
        s = sample_scene(WORLD, rng)
        probes = pope_probes(s, stats, rng, k=3)
        present = [idx[n] for n in s.names]
        absent = [n for n in WORLD.objects if n not in s.names]
        score = {n: stats.cooccurrence[present, idx[n]].sum() for n in absent}
        for split in POPE_SPLITS:
            mine = [p for p in probes if p["split"] == split]
            yes = [p["object"] for p in mine if p["answer"] == "yes"]
            no = [p["object"] for p in mine if p["answer"] == "no"]
            assert len(yes) == len(no) == min(3, len(s.names))
            assert set(yes) <= s.names and not set(no) & s.names and len(set(no)) == len(no)
            for p in mine:
                article = "an" if p["object"][0] in "aeiou" else "a"
                assert p["question"] == f"Is there {article} {p['object']} in the image?"
            rest = [n for n in absent if n not in no]
            if split == "popular":  # the most frequent absent objects
                assert min(stats.frequency[idx[n]] for n in no) >= max(stats.frequency[idx[n]] for n in rest)
            if split == "adversarial":  # the absent objects co-occurring most with present ones
                assert min(score[n] for n in no) >= max(score[n] for n in rest)
            if split in freq:
                freq[split] += [stats.frequency[idx[n]] for n in no]
            if split in cooc:
                cooc[split] += [score[n] for n in no]
                colors = {n.split()[0] for n in s.names}
                same_color[split] += [n.split()[0] in colors for n in no]
        # the positives are the same objects in every split
        yes = {sp: [p["object"] for p in probes if p["split"] == sp and p["answer"] == "yes"] for sp in POPE_SPLITS}
        assert yes["random"] == yes["popular"] == yes["adversarial"]
    assert np.mean(freq["popular"]) > 1.5 * np.mean(freq["random"])
    assert np.mean(cooc["adversarial"]) > 1.5 * np.mean(cooc["random"])
    assert np.mean(same_color["adversarial"]) > np.mean(same_color["random"]) + 0.2


def test_written_llava_and_eval_files(written):
    root, summary = written
    assert summary["train_images"] == 60 and summary["train_shards"] == 3 and summary["val_shards"] == 1
    for split, n in (("train", 60), ("val", 12)):
        records = json.loads((root / f"{split}.json").read_text())
        assert len(records) == n and len(list((root / "images" / split).glob("*.png"))) == n
        for r in records:
            conv = r["conversations"]
            assert conv[0] == {"from": "human", "value": "<image>\nDescribe the image."}
            assert sum(t["value"].count("<image>") for t in conv) == 1
            assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2)
            assert r["types"][0] == "caption" and set(r["types"][1:]) <= set(VQA_TYPES)
            assert (root / r["image"]).is_file()

    val = json.loads((root / "val.json").read_text())
    captions = read_jsonl(root / "val_captions.jsonl")
    assert [c["caption"] for c in captions] == [r["conversations"][1]["value"] for r in val]
    rows = read_jsonl(root / "val_qa.jsonl")
    assert len(rows) == summary["val_questions"] == sum(len(r["types"]) - 1 for r in val)
    for row in rows:
        assert set(row) == {"id", "image", "question", "answer", "type"} and (root / row["image"]).is_file()
    pope = read_jsonl(root / "pope_val.jsonl")
    assert set(pope[0]) == {"id", "image", "question", "answer", "split", "object"}
    assert len({p["id"] for p in pope}) == len(pope) == summary["pope_probes"]
    assert Counter(p["answer"] for p in pope)["yes"] == len(pope) // 2
    meta = json.loads((root / "meta.json").read_text())
    assert meta["generator"] == "shapes" and meta["params"]["image_size"] == 72
    assert sum(meta["train_object_frequency"].values()) >= 60


def test_shards_and_pope_match_scenes(written):
    root, summary = written
    samples = list(wds.WebDataset(summary["shards"]["val"], shardshuffle=False))
    assert [s["__key__"] for s in samples] == [f"val-{i:06d}" for i in range(12)]
    captions = read_jsonl(root / "val_captions.jsonl")
    scenes = {}
    for s, cap in zip(samples, captions):
        assert {"png", "txt", "json"} <= set(s)
        assert s["png"] == (root / cap["image"]).read_bytes()
        assert s["txt"].decode() == cap["caption"]
        scene = json.loads(s["json"])
        scenes[cap["image"]] = {f"{o['color']} {o['shape']}" for o in scene["objects"]}
        objs = tuple(Obj(o["color"], o["shape"], o["size"], o["row"], o["col"]) for o in scene["objects"])
        assert caption(Scene(objs)) == cap["caption"]
    assert sum(1 for _ in wds.WebDataset(summary["shards"]["train"], shardshuffle=False)) == 60
    for p in read_jsonl(root / "pope_val.jsonl"):
        assert (p["object"] in scenes[p["image"]]) == (p["answer"] == "yes")
    for row in read_jsonl(root / "val_qa.jsonl"):
        if row["type"] == "existence":
            obj = row["question"].removeprefix("Is there ").removesuffix(" in the image?").split(" ", 1)[1]
            assert (obj in scenes[row["image"]]) == (row["answer"] == "yes")


def test_deterministic(tmp_path):
    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        write_shapes(tmp_path / name, train_images=6, val_images=3, seed=seed, shard_size=4)
    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert a == b and "shards/train-000001.tar" in a
    assert a["train.json"] != c["train.json"] and a["shards/val-000000.tar"] != c["shards/val-000000.tar"]


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"train_images": 0}, "train_images"),
        ({"shard_size": 0}, "shard_size"),
        ({"image_size": 70}, "image_size"),
        ({"max_objects": 10}, "max_objects"),
        ({"min_objects": 0}, "min_objects"),
        ({"shapes": ["hexagon"]}, "shapes"),
        ({"sizes": {"huge": 0.7}}, "sizes"),
        ({"colors": {"red": (300, 0, 0)}}, "colors"),
        ({"cooccurrence": 2.0}, "cooccurrence"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        write_shapes(tmp_path, **{"train_images": 2, "val_images": 1, **kwargs})
