"""Two-process DDP on CPU (gloo), launched the way users launch it: `chimera fit` with
`trainer.strategy=ddp, devices=2`; Lightning starts the second rank itself. Each rank records
what it trained on and its final weights: the ranks see disjoint samples that together cover
the epoch, and end with identical weights."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import torch
import yaml

from tests.tiny import experiment_config, tiny_world
from train.checkpoint import build_module

ROOT = Path(__file__).resolve().parent.parent


class RecordRank(L.Callback):
    """Writes `rank{R}.json` (a digest per trained sample) and `rank{R}.pt` (final weights) to `out_dir`."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir, self.seen = Path(out_dir), []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        for ids, mask, pixels in zip(batch["input_ids"], batch["attention_mask"], batch["pixel_values"]):
            digest = hashlib.sha1(ids[mask.bool()].numpy().tobytes() + pixels.numpy().tobytes()).hexdigest()
            self.seen.append(digest)

    def on_train_end(self, trainer, pl_module) -> None:
        rank = trainer.global_rank
        (self.out_dir / f"rank{rank}.json").write_text(json.dumps(
            {"seen": self.seen, "world_size": trainer.world_size, "strategy": type(trainer.strategy).__name__}))
        torch.save({k: v.detach().clone() for k, v in pl_module.state_dict().items()}, self.out_dir / f"rank{rank}.pt")


def test_two_process_ddp_splits_data_and_agrees_on_weights(tmp_path):
    world = tiny_world(tmp_path)
    n_train = len(json.loads((world / "train.json").read_text()))
    batch, ranks = 4, 2
    steps = n_train // (batch * ranks)  # one epoch, no sample twice
    cfg = experiment_config(world, tmp_path / "runs", max_steps=steps)
    cfg["trainer"].update({"devices": ranks, "strategy": "ddp",
                           "limit_val_batches": 0, "enable_checkpointing": False,
                           "callbacks": [{"class_path": "tests.test_ddp.RecordRank",
                                          "init_args": {"out_dir": str(tmp_path)}}]})
    cfg["data"]["init_args"].update({"batch_size": batch, "val_qa": None, "num_workers": 0})
    cfg["model"]["init_args"]["stage"] = "finetune"
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    proc = subprocess.run([sys.executable, "-m", "train.cli", "fit", "--config", str(path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(ranks)]
    assert all(r["world_size"] == ranks and r["strategy"] == "DDPStrategy" for r in records)
    seen = [set(r["seen"]) for r in records]
    assert all(len(s) == len(r["seen"]) == steps * batch for s, r in zip(seen, records))
    assert not seen[0] & seen[1]  # disjoint
    assert len(seen[0] | seen[1]) == steps * batch * ranks

    weights = [torch.load(tmp_path / f"rank{r}.pt") for r in range(ranks)]
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key
    L.seed_everything(0)
    initial = build_module(cfg["model"]).state_dict()
    assert any(not torch.equal(initial[k], weights[0][k]) for k in initial if k.startswith("model.connector."))


def test_webdataset_shards_split_by_rank(tmp_path, monkeypatch):
    """Caption/interleaved shards: each DDP rank reads its own shards (webdataset's split_by_node)."""
    import io

    import PIL.Image

    from data.image_text import image_text_pipeline
    from data.writers import write_shards

    def png() -> bytes:
        buf = io.BytesIO()
        PIL.Image.new("RGB", (8, 8)).save(buf, format="PNG")
        return buf.getvalue()

    image = png()
    samples = [{"__key__": f"s{i:03d}", "png": image, "txt": f"caption {i}".encode()} for i in range(8)]
    urls = [str(p) for p in write_shards(tmp_path, "cap", samples, shard_size=2)]
    seen = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        seen.append({caption for _, caption in image_text_pipeline(urls, lambda im: 0, train=True)})
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == {f"caption {i}" for i in range(8)}
