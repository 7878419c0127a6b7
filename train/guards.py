"""Stop a run at the first non-finite loss, before the bad step updates any weight."""

from __future__ import annotations

import torch


class NonFiniteLossError(FloatingPointError):
    pass


def check_finite_loss(loss: torch.Tensor, step: int, batch_idx: int) -> torch.Tensor:
    """Raise naming the step and batch; checkpoints already written (the last good one) stay."""
    if not torch.isfinite(loss).all():
        raise NonFiniteLossError(
            f"loss is {loss.item()} at global step {step} (batch {batch_idx} of the epoch): stopping before "
            "the optimizer step; the checkpoints written so far are kept (resume from the last one with a "
            "lower learning rate, or inspect that batch)")
    return loss
