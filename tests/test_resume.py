"""An interrupted run resumed from its last checkpoint ends with exactly the weights and the
logged losses of an uninterrupted run: same schedule, same data order, same sampled turns."""

import csv

import lightning as L
import pytest
import torch
import yaml

from tests.tiny import experiment_config, tiny_world
from train.cli import main


class KillAfter(L.Callback):
    """Simulates a crash: the process dies right after step `n` (its checkpoint is written)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.n:
            raise KeyboardInterrupt


def _config(world, root, name):
    cfg = experiment_config(world, root, max_steps=8)
    cfg["trainer"]["logger"]["init_args"]["name"] = name
    cfg["trainer"]["val_check_interval"] = 1000
    cfg["trainer"]["limit_val_batches"] = 0
    cfg["trainer"]["callbacks"] = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                    "init_args": {"dirpath": str(root / name / "ckpt"), "save_last": True,
                                                  "every_n_train_steps": 4, "save_top_k": -1}}]
    return cfg


def _losses(root, name, version):
    rows = csv.DictReader(open(root / name / f"version_{version}" / "metrics.csv"))
    return {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}


def test_resume_equals_uninterrupted(tmp_path, monkeypatch):
    world = tiny_world(tmp_path)  # 24 train images, batch 4: 6 steps per epoch, so step 4 is mid-epoch
    full = _config(world, tmp_path, "full")
    (tmp_path / "full.yaml").write_text(yaml.safe_dump(full))
    main(["fit", "--config", str(tmp_path / "full.yaml")])

    cut = _config(world, tmp_path, "cut")
    cut["trainer"]["callbacks"].append({"class_path": "tests.test_resume.KillAfter", "init_args": {"n": 4}})
    (tmp_path / "cut.yaml").write_text(yaml.safe_dump(cut))
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        main(["fit", "--config", str(tmp_path / "cut.yaml")])
    last = tmp_path / "cut" / "ckpt" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 4
    cut["trainer"]["callbacks"] = cut["trainer"]["callbacks"][:1]
    (tmp_path / "cut.yaml").write_text(yaml.safe_dump(cut))
    main(["fit", "--config", str(tmp_path / "cut.yaml"), "--ckpt_path", str(last)])

    a = torch.load(tmp_path / "full" / "ckpt" / "last.ckpt", weights_only=False)
    b = torch.load(last, weights_only=False)
    assert a["global_step"] == b["global_step"] == 8
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    full_losses, resumed = _losses(tmp_path, "full", 0), _losses(tmp_path, "cut", 1)
    assert resumed and all(full_losses[s] == v for s, v in resumed.items())
