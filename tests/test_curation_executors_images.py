"""Image-text shards on the datatrove executors: pHash, SemDeDup and CLIP-score scans run per shard
in parallel tasks and only their decisions are single tasks; kept tars, removals and duplicate
clusters equal the single-process `chimera curate` run's."""

import json

import pytest
from test_curation_executors import assert_same_run
from test_curation_pipeline import ShapesOracle

from data.curation.curate import curate
from data.curation.executors import curate_with_executor, plan_stages
from data.curation.noise import inject_noise
from data.shapes import write_shapes

FILTERS = [{"type": "caption_quality", "min_image_side": 32, "max_word_repeat_fraction": 0.5},
           {"type": "minhash_dedup", "ngram": 5, "char": True, "num_perm": 128, "threshold": 0.9},
           {"type": "phash_dedup", "max_distance": 10, "color_tolerance": 24}]
MODEL_STEPS = [{"type": "semdedup", "eps": 0.02, "clusters": 4}, {"type": "clip_score", "threshold": 0.5}]


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    write_shapes(root / "shapes", train_images=60, val_images=3, seed=0, shard_size=20)
    inject_noise(str(root / "shapes" / "shards" / "train-*.tar"), root / "noisy", mismatch=0.2, exact_dup=0.1,
                 near_dup_image=0.1, near_dup_caption=0.1, degenerate=0.1, seed=0, shard_size=16)
    return [f"{root / 'noisy'}/noisy-*.tar"]


def _models():
    return {"clip_score": ShapesOracle(), "semdedup": ShapesOracle()}


def test_image_chain_stages_are_parallel_scans_and_single_decisions(noisy, tmp_path):
    stages = plan_stages({"steps": FILTERS + MODEL_STEPS[::-1]}, noisy, tmp_path / "out", str(tmp_path / "w"), tasks=3,
                         models=_models())
    assert [(name, n) for name, _, n in stages] == [
        ("pass0-minhash_dedup-scan", 3), ("pass0-minhash_dedup-bands", 3), ("pass0-minhash_dedup-clusters", 1),
        ("pass1-phash_dedup-scan", 3), ("pass1-phash_dedup-decide", 1),
        ("pass2-clip_score-scan", 3), ("pass2-clip_score-decide", 1),
        ("pass3-semdedup-scan", 3), ("pass3-semdedup-decide", 1), ("write", 3), ("report", 1)]


def test_pixel_steps_on_two_worker_processes_match_single_process(noisy, tmp_path):
    config = {"steps": FILTERS}
    report = curate(config, noisy, tmp_path / "single")
    assert [s["removed"] > 0 for s in report["steps"]] == [True, True, True]
    curate_with_executor(config, noisy, tmp_path / "dist", "local", tasks=3, workers=2)
    assert_same_run(tmp_path / "single", tmp_path / "dist")


def test_clip_score_and_semdedup_match_single_process(noisy, tmp_path):
    config = {"steps": FILTERS[:2] + MODEL_STEPS}  # semdedup before pHash can take the copies
    report = curate(config, noisy, tmp_path / "single", models=_models())
    by_name = {s["name"]: s for s in report["steps"]}
    assert by_name["clip_score"]["removed"] > 0 and by_name["semdedup"]["removed"] > 0
    dist = curate_with_executor(config, noisy, tmp_path / "dist", "local", tasks=3, workers=1, models=_models())
    assert_same_run(tmp_path / "single", tmp_path / "dist")
    assert dist["steps"][3]["params"]["cutoff"] == pytest.approx(by_name["clip_score"]["params"]["cutoff"])
    clusters = [json.loads(x) for x in (tmp_path / "dist" / "removed.jsonl").read_text().splitlines()]
    assert {r["step"] for r in clusters if "duplicate_of" in r} == {"minhash_dedup", "semdedup"}
