"""A NaN loss stops the run naming the step and batch, before it touches the weights; the
checkpoint written before it stays intact and loadable."""

import pytest
import torch
import yaml

from models.llava import LLaVA
from tests.tiny import experiment_config, tiny_world
from train.checkpoint import load_module
from train.cli import main
from train.guards import NonFiniteLossError


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    world = tiny_world(tmp_path)
    cfg = experiment_config(world, tmp_path, max_steps=6)
    cfg["trainer"]["callbacks"] = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                    "init_args": {"dirpath": str(tmp_path / "ckpt"), "every_n_train_steps": 2,
                                                  "save_top_k": -1}}]
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    calls = {"n": 0}
    forward = LLaVA.forward

    def poisoned(self, *args, **kwargs):
        logits, loss = forward(self, *args, **kwargs)
        if loss is not None and self.training:
            calls["n"] += 1
            if calls["n"] == 4:  # the 4th training step (global step 3)
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(LLaVA, "forward", poisoned)
    with pytest.raises(NonFiniteLossError, match="at global step 3 \\(batch"):
        main(["fit", "--config", str(tmp_path / "cfg.yaml")])
    saved = sorted(p.name for p in (tmp_path / "ckpt").glob("*.ckpt"))
    assert saved == ["epoch=0-step=2.ckpt"]
    module = load_module(tmp_path / "ckpt" / saved[0])
    assert all(torch.isfinite(p).all() for p in module.parameters())
