"""Linear warmup then cosine decay, as a LambdaLR multiplier, and the per-step scheduler every
stage builds from it."""

from __future__ import annotations

import math

import torch


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> float:
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine_scheduler(optimizer: torch.optim.Optimizer, trainer, warmup_ratio: float,
                            min_ratio: float) -> dict:
    """Lightning's `lr_scheduler` entry: `warmup_cosine` over the run's optimizer steps.

    A run bounded only by time (`trainer.max_time`, `max_steps: -1`, no `max_epochs`) has no step
    count to decay over: a constant rate (`warmup_ratio: 0`, `min_lr_ratio: 1`) needs none, and a
    warmup or decay is refused in one line instead of failing on an infinite count."""
    total = trainer.estimated_stepping_batches
    if math.isinf(total):
        if warmup_ratio > 0 or min_ratio < 1:
            raise ValueError("model: warmup_ratio/min_lr_ratio schedule over the run's steps, but the trainer "
                             "sets no step or epoch limit (max_time alone); set trainer.max_steps, or "
                             "warmup_ratio: 0 and min_lr_ratio: 1 for a constant rate")
        total = 1
    total = max(1, int(total))
    warmup = int(warmup_ratio * total)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, total, warmup, min_ratio))
    return {"scheduler": sched, "interval": "step"}
