"""`chimera curate` end to end on a Shapes set with injected noise: each step's precision and recall
against the ground-truth labels, shard-by-shard streaming, CLIP-score mechanics, JSONL corpora."""

import json
import re
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from data.curation.clip_score import clip_scores, select_by_score
from data.curation.curate import curate
from data.curation.noise import inject_noise, read_labels, step_precision_recall
from data.curation.shards import read_shard
from data.shapes import DEFAULT_COLORS, GRID, POSITIONS, write_shapes
from train.cli import main

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "curation" / "shapes.yaml"
CLIP_CONFIG = {"embed_dim": 32,  # as in test_clip_stage.py: untrained, for mechanics only
               "vision_cfg": {"image_size": 72, "layers": 2, "width": 64, "patch_size": 12, "head_width": 32},
               "text_cfg": {"context_length": 64, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
DUPS = ("exact_dup", "near_dup_image", "near_dup_caption")


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    root = tmp_path_factory.mktemp("curation")
    write_shapes(root / "shapes", train_images=60, val_images=3, seed=0, shard_size=20)
    summary = inject_noise(str(root / "shapes" / "shards" / "train-*.tar"), root / "noisy", mismatch=0.2,
                           exact_dup=0.1, near_dup_image=0.1, near_dup_caption=0.1, degenerate=0.1, seed=0,
                           shard_size=16)
    return root, summary


def _removed(out):
    return {r["key"]: r["step"] for r in map(json.loads, (out / "removed.jsonl").read_text().splitlines())}


def test_noise_injection_is_labelled(noisy):
    root, summary = noisy
    labels = read_labels(summary["labels"])
    counts = summary["counts"]
    assert counts["mismatch"] == 12 and counts["degenerate"] == 6
    assert counts["near_dup_image"] == counts["near_dup_caption"] == 6 and counts["exact_dup"] >= 6
    assert summary["samples"] == 60 + 18 and len(labels) == 78
    samples = {s["__key__"]: s for url in summary["shards"] for s in read_shard(url)}
    order = list(samples)
    for key, label in labels.items():  # copies come after their original; near copies differ as stated
        if label in DUPS and key.count("-") == 2:
            orig = key.rsplit("-", 1)[0]
            assert order.index(orig) < order.index(key)
            same_png, same_txt = samples[orig]["png"] == samples[key]["png"], samples[orig]["txt"] == samples[key]["txt"]
            assert (same_png, same_txt) == {"exact_dup": (True, True), "near_dup_image": (False, True),
                                            "near_dup_caption": (True, False)}[label]


def test_curate_cli_end_to_end_precision_recall(noisy):
    root, summary = noisy
    out = root / "curated"
    main(["curate", "--config", str(CONFIG), "--in", f"train={root / 'noisy'}/noisy-*.tar", "--out", str(out)])
    report = json.loads((out / "curation_report.json").read_text())
    assert [s["name"] for s in report["steps"]] == ["caption_quality", "minhash_dedup", "phash_dedup"]
    assert report["input"] == 78 and report["kept"] == 78 - report["removed"]
    for s in report["steps"]:
        assert s["kept"] + s["removed"] == s["input"] and sum(s["reasons"].values()) == s["removed"]
        assert len(s["examples"]) == min(3, s["removed"])
    labels = read_labels(summary["labels"])
    pr = step_precision_recall(_removed(out), labels, ["caption_quality", "minhash_dedup", "phash_dedup"],
                               {"caption_quality": ["degenerate"], "minhash_dedup": DUPS, "phash_dedup": DUPS})
    print(json.dumps(pr, indent=1))
    assert pr["caption_quality"]["precision"] == 1.0 and pr["caption_quality"]["recall"] == 1.0
    assert pr["minhash_dedup"]["precision"] >= 0.9 and pr["minhash_dedup"]["recall"] >= 0.6
    assert pr["phash_dedup"]["precision"] >= 0.8 and pr["phash_dedup"]["recall"] >= 0.9
    dups = {k for k, v in labels.items() if v in DUPS}
    assert len(dups & set(_removed(out))) / len(dups) >= 0.95
    # outputs: same format, same shard names, the manifest lists what was kept
    kept = [s for p in sorted((out / "train").glob("noisy-*.tar")) for s in read_shard(p)]
    assert len(kept) == report["kept"] and {"png", "txt", "json"} <= set(kept[0])
    manifest = json.loads((out / "mixture.json").read_text())
    assert manifest["sources"]["train"]["samples"] == report["kept"]
    assert manifest["probabilities"] == {"train": 1.0}


class _Tracked(dict):
    pass


def test_pipeline_holds_one_shard_at_a_time(noisy, tmp_path):
    root, _ = noisy
    live: list[weakref.ref] = []
    reads = []

    def reader(url):  # no gc.collect(): samples must be freed by reference counting alone
        held = sum(r() is not None for r in live)
        if held:
            raise AssertionError(f"{held} samples of an earlier shard still held while reading {url}")
        samples = [_Tracked(s) for s in read_shard(url)]
        live[:] = [weakref.ref(s) for s in samples]
        reads.append(url)
        return samples

    report = curate(CONFIG, [f"{root / 'noisy'}/noisy-*.tar"], tmp_path, reader=reader)
    n_shards = len(list((root / "noisy").glob("noisy-*.tar")))
    # passes: caption+minhash, phash, then the write pass
    assert len(reads) == 3 * n_shards and report["removed"] > 0


class ShapesOracle(torch.nn.Module):
    """A hand-built scorer with CLIP's interface, standing in for a trained CLIP checkpoint:
    image -> per-(colour, cell) pixel fractions; caption -> the (colour, cell) pairs it names."""

    colors = list(DEFAULT_COLORS)
    cells = {name: r * GRID + c for (r, c), name in POSITIONS.items()}

    def transform(self, train=False):
        return lambda image: torch.from_numpy(np.asarray(image.convert("RGB").resize((72, 72)), dtype=np.float32))

    def encode_image(self, pixels):
        rgb = torch.tensor(list(DEFAULT_COLORS.values()), dtype=torch.float32)
        near = (pixels[:, :, :, None, :] - rgb).norm(dim=-1) < 40  # (B, H, W, colours)
        cells = torch.nn.functional.avg_pool2d(near.permute(0, 3, 1, 2).float(), 24)  # (B, colours, 3, 3)
        return torch.nn.functional.normalize(cells.flatten(1), dim=-1)

    def tokenize(self, texts):
        out = torch.zeros(len(texts), len(self.colors) * GRID * GRID)
        for i, t in enumerate(texts):
            for color, cell in re.findall(r"(\w+) \w+ (?:at|in) the ((?:top|middle|bottom) \w+|center)", t.lower()):
                if color in self.colors and cell in self.cells:
                    out[i, self.colors.index(color) * GRID * GRID + self.cells[cell]] = 1
        return out

    def encode_text(self, tokens):
        return torch.nn.functional.normalize(tokens, dim=-1)


def test_clip_score_step_finds_mismatched_captions(noisy, tmp_path):
    root, summary = noisy
    config = {"steps": [{"type": "caption_quality", "min_image_side": 32, "max_word_repeat_fraction": 0.5},
                        {"type": "clip_score", "threshold": 0.5}]}
    report = curate(config, [f"{root / 'noisy'}/noisy-*.tar"], tmp_path, models={"clip_score": ShapesOracle()})
    step = report["steps"][1]
    assert step["params"]["threshold"] == 0.5 and step["params"]["cutoff"] >= 0.5
    pr = step_precision_recall(_removed(tmp_path), read_labels(summary["labels"]),
                               ["caption_quality", "clip_score"],
                               {"caption_quality": ["degenerate"], "clip_score": ["mismatch"]})
    print(json.dumps(pr, indent=1))
    assert pr["clip_score"]["precision"] >= 0.9 and pr["clip_score"]["recall"] >= 0.9


def test_clip_scores_with_a_tiny_contrastive_dual_encoder():
    from PIL import Image

    from models.clip import ContrastiveDualEncoder

    model = ContrastiveDualEncoder(model_config=CLIP_CONFIG).eval()
    images = [Image.new("RGB", (72, 72), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    texts = ["a red square", "a blue square", "a green square"]
    scores = clip_scores(model, images, texts, batch_size=2)
    with torch.no_grad():
        pixels = torch.stack([model.transform()(im) for im in images])
        ref = (model.encode_image(pixels) * model.encode_text(model.tokenize(texts))).sum(-1)
    assert scores.shape == (3,) and np.allclose(scores, ref.numpy(), atol=1e-5)
    assert (np.abs(scores) <= 1 + 1e-6).all()


def test_select_by_score():
    s = np.array([0.1, 0.9, 0.3, 0.9, 0.5, 0.2, 0.7, 0.0, 0.4, 0.6])
    assert select_by_score(s, threshold=0.5).tolist() == [False, True, False, True, True, False, True, False,
                                                          False, True]
    top = select_by_score(s, top_fraction=0.3)  # DataComp's "top 30%": 3 of 10
    assert np.flatnonzero(top).tolist() == [1, 3, 6]
    assert select_by_score(s, top_fraction=1.0).all()
    with pytest.raises(ValueError, match="exactly one"):
        select_by_score(s, threshold=0.5, top_fraction=0.3)
    with pytest.raises(ValueError, match="top_fraction"):
        curate({"steps": [{"type": "clip_score", "top_fraction": 1.5}]}, {}, "unused",
               models={"clip_score": ShapesOracle()})


def test_bad_config_fails_before_reading(tmp_path):
    with pytest.raises(ValueError, match="unknown type 'minhash'"):
        curate({"steps": [{"type": "minhash"}]}, ["/nonexistent/*.tar"], tmp_path)
    with pytest.raises(ValueError, match="minhash_dedup.*treshold"):
        curate({"steps": [{"type": "minhash_dedup", "treshold": 0.8}]}, ["/nonexistent/*.tar"], tmp_path)


GOOD = ("The old harbour town has a small museum about the history of its fishing fleet. In summer the "
        "boats go out before dawn and return with the tide, and the market opens when the first crates "
        "arrive at the quay. Visitors are welcome to watch the auction from a gallery above the hall, "
        "where a guide explains how prices are set and why the catch has changed over the last century.")


def test_curate_jsonl_text_corpus(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    docs = [{"id": "good", "text": GOOD}, {"id": "short", "text": "Buy now!"},
            {"id": "copy", "text": GOOD.replace("small", "little")},
            {"id": "list", "text": "\n".join(f"- item number {i} of the list with the best offers" for i in range(12))}]
    other = [{"id": "other", "text": GOOD.replace("harbour", "river").replace("fishing", "barge").replace(
        "boats go out", "barges leave").replace("the tide", "the current") + " Then the market closes."}]
    (src / "web-000000.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (src / "books-000000.jsonl").write_text("".join(json.dumps(d) + "\n" for d in other))
    config = {"steps": [{"type": "text_quality"}, {"type": "minhash_dedup", "ngram": 3, "threshold": 0.8}],
              "mixture": {"temperature": 2.0}}
    report = curate(config, [f"web={src}/web-*.jsonl", f"books={src}/books-*.jsonl"], tmp_path / "out")
    removed = {r["key"]: (r["step"], r["reason"]) for r in
               map(json.loads, (tmp_path / "out" / "removed.jsonl").read_text().splitlines())}
    assert removed == {"short": ("text_quality", "word_count<50"), "list": ("text_quality", "bullet_lines>0.9"),
                       "copy": ("minhash_dedup", "near_duplicate_text")}
    kept = [json.loads(x)["id"] for x in (tmp_path / "out" / "web" / "web-000000.jsonl").read_text().splitlines()]
    assert kept == ["good"]
    assert report["steps"][1]["examples"][0]["duplicate_of"] == "good"
    probs = json.loads((tmp_path / "out" / "mixture.json").read_text())["probabilities"]
    assert probs == pytest.approx({"web": 0.5, "books": 0.5})  # 1 kept each
