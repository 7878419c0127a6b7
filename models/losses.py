"""Next-token cross-entropy, plain or in chunks that never hold the full-vocabulary logits.

Why: at 2048 positions x 32k vocabulary the fp32 logits of one row take 256 MiB, and autograd
keeps them (and their softmax) for the backward. Chunking projects `chunk_size` positions at a
time through the output head under activation checkpointing, so only one chunk's logits exist
at once, forward or backward; the result equals the plain loss (same tokens, same mean).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from data.tokenize import IGNORE_INDEX


def shifted_targets(labels: Tensor) -> Tensor:
    """Position t predicts token t+1: targets are labels shifted left, the last position ignored."""
    return torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), IGNORE_INDEX)], dim=1)


def next_token_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean CE over every position whose next label is not -100 (fp32 logits)."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)


def _chunk_loss_sum(head: Callable[[Tensor], Tensor], hidden: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(head(hidden).float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")


def chunked_next_token_loss(hidden: Tensor, head: Callable[[Tensor], Tensor], labels: Tensor,
                            chunk_size: int = 1024) -> Tensor:
    """`next_token_loss(head(hidden), labels)` without materialising all logits.

    Only positions with a target are projected (prompt and padding rows of the head's matmul are
    skipped, which also saves their FLOPs); each chunk's logits are recomputed in the backward.
    """
    if chunk_size < 1:
        raise ValueError(f"loss chunk_size must be positive, got {chunk_size}")
    targets = shifted_targets(labels).flatten()
    keep = targets != IGNORE_INDEX
    count = keep.sum()
    hidden = hidden.flatten(0, 1)[keep]
    targets = targets[keep]
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[start:start + chunk_size], targets[start:start + chunk_size]
        total = total + checkpoint(_chunk_loss_sum, head, h, t, use_reentrant=False)
    return total / count  # 0/0 = nan when nothing is labelled, as the plain loss gives
