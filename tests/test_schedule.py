"""The learning-rate schedule every stage builds: warmup then cosine over the run's optimizer steps,
and runs bounded by time alone (constant rate allowed, a decay refused in one line)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import yaml

from tests.tiny import experiment_config, tiny_world
from train.schedule import warmup_cosine, warmup_cosine_scheduler


def test_warmup_then_cosine_values():
    assert [warmup_cosine(s, 10, 2) for s in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert warmup_cosine(6, 10, 2) == pytest.approx(0.5)  # half way through the decay
    assert warmup_cosine(10, 10, 2, min_ratio=0.1) == pytest.approx(0.1)
    assert warmup_cosine(50, 10, 2, min_ratio=0.1) == pytest.approx(0.1)  # stays at the floor


def _lrs(trainer, warmup_ratio, min_ratio, steps):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = warmup_cosine_scheduler(opt, trainer, warmup_ratio, min_ratio)["scheduler"]
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_scheduler_decays_over_the_runs_steps():
    lrs = _lrs(SimpleNamespace(estimated_stepping_batches=8), 0.25, 0.0, 9)
    expected = [2.0 * warmup_cosine(s, 8, 2) for s in range(9)]
    assert lrs == pytest.approx(expected)
    assert lrs[1] == 2.0 and lrs[8] == pytest.approx(0.0)
    assert lrs[5] == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 3 / 6)))


def test_time_bounded_run_takes_a_constant_rate_and_refuses_a_decay():
    endless = SimpleNamespace(estimated_stepping_batches=float("inf"))
    assert _lrs(endless, 0.0, 1.0, 5) == [2.0] * 5
    for warmup, floor in ((0.1, 1.0), (0.0, 0.05)):
        with pytest.raises(ValueError, match="no step or epoch limit"):
            _lrs(endless, warmup, floor, 1)


def test_fit_bounded_by_max_time_trains(tmp_path):
    from train.cli import main

    cfg = experiment_config(tiny_world(tmp_path), tmp_path / "runs", max_steps=-1)
    cfg["trainer"].update({"max_time": "00:00:00:04", "val_check_interval": None, "limit_val_batches": 0,
                           "enable_checkpointing": False})
    cfg["model"]["init_args"].update({"warmup_ratio": 0.0, "min_lr_ratio": 1.0})
    path = tmp_path / "timed.yaml"
    path.write_text(yaml.safe_dump(cfg))
    main(["fit", "--config", str(path)])
    rows = (next((tmp_path / "runs").rglob("metrics.csv"))).read_text().splitlines()
    header = rows[0].split(",")
    losses = [float(r.split(",")[header.index("train/loss")]) for r in rows[1:] if r.split(",")[header.index("train/loss")]]
    assert losses and all(math.isfinite(x) for x in losses)  # it trained until the clock stopped it
