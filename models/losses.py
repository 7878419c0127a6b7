"""Next-token cross-entropy and label log-probabilities, never holding a full-vocabulary fp32 copy.

Why: at 2048 positions x 32k vocabulary the fp32 logits of one row take 256 MiB, and autograd
keeps their log-softmax for the backward. `token_nll` reads the logits (any dtype) a few
positions at a time, upcasting one chunk to fp32, and keeps only an fp32 log-sum-exp per
position for the backward, which writes the gradient chunk by chunk in the logits' dtype.
`chunked_next_token_loss` goes further and never holds all logits at all: it projects
`chunk_size` positions at a time through the output head under activation checkpointing.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

from data.tokenize import IGNORE_INDEX

# fp32 elements of one chunk's temporaries (64 MiB): rows per chunk = this // vocabulary size
CHUNK_ELEMENTS = 1 << 24


def shifted_targets(labels: Tensor) -> Tensor:
    """Position t predicts token t+1: targets are labels shifted left, the last position ignored."""
    return torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), IGNORE_INDEX)], dim=1)


class _TokenNLL(torch.autograd.Function):
    """-log softmax(logits)[target] per row of (N, V) logits, 0 where the target is ignored."""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, rows: int) -> Tensor:
        keep = targets != IGNORE_INDEX
        safe = targets.masked_fill(~keep, 0)
        lse = logits.new_empty(logits.shape[0], dtype=torch.float32)
        picked = logits.gather(1, safe[:, None])[:, 0].float()
        for start in range(0, logits.shape[0], rows):
            lse[start:start + rows] = torch.logsumexp(logits[start:start + rows].float(), dim=1)
        ctx.save_for_backward(logits, safe, keep, lse)
        ctx.rows = rows
        return torch.where(keep, lse - picked, 0.0)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        logits, safe, keep, lse = ctx.saved_tensors
        scale = torch.where(keep, grad, 0.0).float()
        out = torch.empty_like(logits)
        for start in range(0, logits.shape[0], ctx.rows):
            end = start + ctx.rows
            p = (logits[start:end].float() - lse[start:end, None]).exp_()  # softmax, one chunk in fp32
            p.scatter_add_(1, safe[start:end, None], -torch.ones_like(p[:, :1]))
            out[start:end] = p.mul_(scale[start:end, None])
        return out, None, None


def token_nll(logits: Tensor, targets: Tensor, chunk_rows: int | None = None) -> Tensor:
    """(N, V) logits, (N,) targets -> (N,) fp32 negative log-likelihoods, 0 where the target is -100.

    Equals `F.cross_entropy(logits.float(), targets, reduction="none", ignore_index=-100)`, but the
    fp32 upcast (forward and backward) exists for `chunk_rows` rows at a time only (default: as many
    as fit in CHUNK_ELEMENTS), and the backward keeps an fp32 log-sum-exp per row, not a log-softmax.
    """
    rows = chunk_rows or max(1, CHUNK_ELEMENTS // max(1, logits.shape[1]))
    return _TokenNLL.apply(logits, targets, rows)


def next_token_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean CE over every position whose next label is not -100 (fp32 accumulation; nan if none)."""
    targets = shifted_targets(labels).flatten()
    nll = token_nll(logits.flatten(0, 1), targets)  # a view: (B, L, V) logits are not copied
    return nll.sum() / (targets != IGNORE_INDEX).sum()


def summed_label_logprobs(logits: Tensor, labels: Tensor) -> Tensor:
    """(B,) next-token log-probabilities summed per row over positions whose label is not -100 (DPO's terms)."""
    nll = token_nll(logits.flatten(0, 1), shifted_targets(labels).flatten())
    return -nll.view(labels.shape).sum(1)


def _chunk_loss_sum(head: Callable[[Tensor], Tensor], hidden: Tensor, targets: Tensor) -> Tensor:
    return token_nll(head(hidden), targets).sum()


def chunked_next_token_loss(hidden: Tensor, head: Callable[[Tensor], Tensor], labels: Tensor,
                            chunk_size: int = 1024) -> Tensor:
    """`next_token_loss(head(hidden), labels)` without materialising all logits.

    Only positions with a target are projected (prompt and padding rows of the head's matmul are
    skipped, which also saves their FLOPs); each chunk's logits are recomputed in the backward.
    Finding those positions is this loss's one host sync (it sets how many chunks there are).
    """
    if chunk_size < 1:
        raise ValueError(f"loss chunk_size must be positive, got {chunk_size}")
    targets = shifted_targets(labels).flatten()
    keep = targets != IGNORE_INDEX
    count = keep.sum()
    where = keep.nonzero()[:, 0]  # integer positions: the backward scatters without another sync
    hidden = hidden.flatten(0, 1).index_select(0, where)
    targets = targets.index_select(0, where)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[start:start + chunk_size], targets[start:start + chunk_size]
        total = total + checkpoint(_chunk_loss_sum, head, h, t, use_reentrant=False)
    return total / count  # 0/0 = nan when nothing is labelled, as the plain loss gives
