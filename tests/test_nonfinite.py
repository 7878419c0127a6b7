"""A NaN loss stops the run naming the step and batch; no checkpoint is written after it, the one
written before it stays intact and loadable, and the guard adds no host sync to a training step."""

from types import SimpleNamespace

import pytest
import torch
import yaml

from models.llava import LLaVA
from tests.tiny import experiment_config, tiny_world
from train.checkpoint import load_module
from train.cli import main
from train.guards import FiniteLossGuard, NonFiniteLossError
from train.host_syncs import HostSyncCounter


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


def test_a_nan_between_log_steps_is_caught_before_the_next_checkpoint_is_written(tmp_path, monkeypatch):
    """Logging every 50 steps, the guard first reads its record when step 4's checkpoint is due: that
    checkpoint is never written, and the error names step 3, the first bad one."""
    world = tiny_world(tmp_path)
    cfg = experiment_config(world, tmp_path, max_steps=6)
    cfg["trainer"]["log_every_n_steps"] = 50
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
            if calls["n"] == 4:
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(LLaVA, "forward", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"^loss is nan at global step 3 \(batch 3 of the epoch\), found "
                                                 r"before saving the checkpoint of step 4: stopping"):
        main(["fit", "--config", str(tmp_path / "cfg.yaml")])
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("*.ckpt")) == ["epoch=0-step=2.ckpt"]


def _trainer(step: int, log_every: int = 50) -> SimpleNamespace:
    return SimpleNamespace(global_step=step, log_every_n_steps=log_every, strategy=None, sanity_checking=False)


def test_the_guards_per_step_work_makes_no_host_sync():
    guard = FiniteLossGuard()
    losses = [torch.tensor(2.5), torch.tensor(1.0, requires_grad=True) * 3, torch.tensor(float("inf")),
              torch.tensor(float("nan")), torch.tensor(0.5)]
    with HostSyncCounter() as counter:
        for step, loss in enumerate(losses):
            assert guard.observe(loss, step, 10 + step) is loss
            guard.on_before_optimizer_step(_trainer(step + 1), None, None)  # not a log step: nothing read
    assert counter.total == 0, counter.by_op
    guard.on_before_optimizer_step(_trainer(50, log_every=0), None, None)  # logging off: no log steps
    with HostSyncCounter() as counter, pytest.raises(
            NonFiniteLossError, match=r"^loss is inf at global step 2 \(batch 12 of the epoch\), found before the "
                                      r"update of log step 50"):
        guard.on_before_optimizer_step(_trainer(50), None, None)
    assert counter.total > 0  # the check itself is the one place that reads the device


def test_finite_losses_pass_every_check():
    guard = FiniteLossGuard()
    for step in range(3):
        guard.observe(torch.tensor(1.0 / (step + 1)), step, step)
    guard.on_before_optimizer_step(_trainer(50), None, None)
    guard.on_save_checkpoint(_trainer(3), None, {})
    guard.on_validation_start(_trainer(3), None)
    guard.on_train_end(_trainer(3), None)
    FiniteLossGuard().on_train_end(_trainer(0), None)  # nothing observed yet


def test_a_nan_in_the_last_steps_fails_the_run_at_its_end():
    guard = FiniteLossGuard()
    guard.observe(torch.tensor(1.0), 0, 0)
    guard.observe(torch.tensor(float("nan")), 1, 1)
    with pytest.raises(NonFiniteLossError, match=r"global step 1 \(batch 1 .*found at the end of training"):
        guard.on_train_end(_trainer(2), None)
