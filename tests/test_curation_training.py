"""The curation pipeline's data stages (noise -> curate with CLIP score from a `chimera fit` CLIP
checkpoint -> LLaVA conversations), tiny sizes: the conversation files hold exactly the kept pairs."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from data.curation.clip_score import build_model
from data.curation.shards import read_shard
from train.pipeline import Pipeline

CLIP_CONFIG = {"embed_dim": 32,
               "vision_cfg": {"image_size": 72, "layers": 2, "width": 64, "patch_size": 12, "head_width": 32},
               "text_cfg": {"context_length": 64, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def fake_clip_checkpoint(path: Path) -> torch.nn.Module:
    """What `chimera fit` writes for the clip stage (resolved config + state dict), untrained."""
    from train.checkpoint import build_module

    config = {"class_path": "train.clip_module.CLIPModule",
              "init_args": {"model": {"class_path": "models.clip.ContrastiveDualEncoder",
                                      "init_args": {"model_config": CLIP_CONFIG}}}}
    module = build_module(config)
    torch.save({"chimera_config": config, "state_dict": module.state_dict()}, path)
    return module.model


def test_build_model_from_clip_stage_checkpoint(tmp_path):
    model = fake_clip_checkpoint(tmp_path / "last.ckpt")
    loaded = build_model({"checkpoint": str(tmp_path / "last.ckpt")})
    assert type(loaded).__name__ == "ContrastiveDualEncoder" and not loaded.training
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(FileNotFoundError, match="train the `clip` stage first"):
        build_model({"checkpoint": str(tmp_path / "missing.ckpt")})
    with pytest.raises(ValueError, match="no other keys"):
        build_model({"checkpoint": str(tmp_path / "last.ckpt"), "pretrained": "x"})


def _captions(records):
    return {r["id"]: r["conversations"][1]["value"] for r in records}


def test_noise_curate_conversations_stages(tmp_path):
    fake_clip_checkpoint(tmp_path / "clip.ckpt")
    curation = {"steps": [{"type": "caption_quality", "min_image_side": 32, "max_word_repeat_fraction": 0.5},
                          {"type": "phash_dedup", "max_distance": 10, "color_tolerance": 24},
                          {"type": "clip_score", "model": "set by the stage", "top_fraction": 0.75}]}
    spec = {"out": str(tmp_path / "run"), "stages": [
        {"name": "data", "data": {"world": "shapes", "train_images": 24, "val_images": 2, "shard_size": 8}},
        {"name": "noisy", "noise": {"src": "{data}/shards/train-*.tar", "mismatch": 0.2, "degenerate": 0.1,
                                    "exact_dup": 0.1, "near_dup_image": 0.0, "near_dup_caption": 0.0,
                                    "shard_size": 10}},
        {"name": "curated", "curate": {"config": curation, "in": ["train={noisy}/noisy-*.tar"],
                                       "models": {"clip_score": {"checkpoint": str(tmp_path / "clip.ckpt")}}}},
        {"name": "noisy_llava", "conversations": {"shards": "{noisy}/noisy-*.tar"}},
        {"name": "curated_llava", "conversations": {"shards": "{curated}/train/noisy-*.tar"}},
    ]}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(spec))
    pipe = Pipeline(tmp_path / "p.yaml", log=lambda *_: None)
    pipe.run()
    run = tmp_path / "run"

    noisy = [s for p in sorted((run / "noisy").glob("noisy-*.tar")) for s in read_shard(p)]
    kept = [s for p in sorted((run / "curated" / "train").glob("noisy-*.tar")) for s in read_shard(p)]
    report = json.loads((run / "curated" / "curation_report.json").read_text())
    assert len(noisy) == 24 + 2 and report["input"] == 26 and len(kept) == report["kept"] < 26
    assert report["steps"][-1]["name"] == "clip_score" and report["steps"][-1]["removed"] > 0

    for name, samples in (("noisy_llava", noisy), ("curated_llava", kept)):
        records = json.loads((run / name / "train.json").read_text())
        assert _captions(records) == {s["__key__"]: s["txt"].decode() for s in samples}  # noise kept verbatim
        assert [r["id"] for r in records] == [s["__key__"] for s in samples]
        for r, s in zip(records, samples):
            assert r["conversations"][0]["value"] == "<image>\nDescribe the image."
            assert (run / name / r["image"]).read_bytes() == s["png"]
    labels = [json.loads(x) for x in (run / "noisy" / "noise_labels.jsonl").read_text().splitlines()]
    degenerate = {r["key"] for r in labels if r["label"] == "degenerate"}
    curated_ids = {r["id"] for r in json.loads((run / "curated_llava" / "train.json").read_text())}
    assert len(degenerate) == 2 and not degenerate & curated_ids
    # rerunning skips every finished stage
    logs = []
    Pipeline(tmp_path / "p.yaml", log=logs.append).run()
    assert all("skipped" in line for line in logs) and len(logs) == 5
