"""Resume under DDP on 2 gloo ranks, with `max_epochs` as the LLaVA-1.5 configs train: a run
resumed from a mid-epoch checkpoint, and one resumed from the checkpoint written at an epoch's
last batch, end with the weights of the uninterrupted run, and log the same losses and learning
rates at every step after the resume (the cosine schedule keeps its length)."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from tests.test_ddp import ddp_config
from tests.tiny import launch_fit, tiny_world


def logged(run: Path) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    for row in csv.DictReader(open(run / "metrics.csv")):
        for key in ("train/loss", "lr-AdamW/connector"):
            if row.get(key):
                out.setdefault(int(row["step"]), {})[key] = float(row[key])
    return out


def test_resume_mid_epoch_and_at_epoch_end_equals_uninterrupted(tmp_path):
    world = tiny_world(tmp_path)  # 24 samples, 2 ranks x batch 4: 3 steps per epoch, 6 in 2 epochs
    ckpts = tmp_path / "ckpt"

    def config(name: str) -> dict:
        cfg = ddp_config(world, tmp_path / "runs", name)
        cfg["trainer"].update({"max_epochs": 2, "limit_val_batches": 0, "val_check_interval": None,
                               "check_val_every_n_epoch": 1, "callbacks": [
            {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor", "init_args": {"logging_interval": "step"}},
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {
                "dirpath": str(ckpts / name), "every_n_train_steps": 1, "save_top_k": -1, "save_last": True}}]})
        cfg["model"]["init_args"].update({"warmup_ratio": 0.2, "weight_decay": 0.1})
        return cfg

    launch_fit(config("full"), tmp_path / "full.yaml")
    full = logged(tmp_path / "runs" / "full" / "version_0")
    assert sorted(full) == list(range(6)) and full[5]["lr-AdamW/connector"] > 0  # cosine not past its end
    final = torch.load(ckpts / "full" / "last.ckpt", weights_only=False)
    assert final["global_step"] == 6 and final["epoch"] == 1

    for name, step in (("mid", 2), ("end", 3)):  # step 3 is the last batch of epoch 0
        start = ckpts / "full" / f"epoch=0-step={step}.ckpt"
        launch_fit(config(name), tmp_path / f"{name}.yaml", "--ckpt_path", str(start))
        resumed = torch.load(ckpts / name / "last.ckpt", weights_only=False)
        assert resumed["global_step"] == 6 and resumed["epoch"] == 1, name
        for key, value in final["state_dict"].items():
            assert torch.equal(value, resumed["state_dict"][key]), (name, key)
        after = logged(tmp_path / "runs" / name / "version_0")
        assert sorted(after) == list(range(step, 6)), name
        assert all(after[s] == full[s] for s in after), name
