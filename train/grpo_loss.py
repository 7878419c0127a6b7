"""GRPO's objective (DeepSeekMath, Shao et al. 2024, eq. 3), as pure tensor math.

For G completions o_i of one prompt with rewards r_i, the advantage of every token of o_i is
A_i = (r_i - mean(r)) / (std(r) + eps). The loss is the negative of

    1/G sum_i 1/|o_i| sum_t [ min(rho_it A_i, clip(rho_it, 1 - e, 1 + e) A_i) - beta KL_it ],

rho_it = pi(o_it) / pi_old(o_it) and KL_it = ref/pi - log(ref/pi) - 1 (the k3 estimator,
unbiased and never negative), averaged here over every group of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def group_advantages(rewards: Tensor, group_size: int, eps: float = 1e-4) -> Tensor:
    """(N,) rewards, G consecutive completions per prompt -> (N,) advantages normalised within
    each group (unbiased std, as TRL); a group whose rewards are all equal gets zeros."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    groups = rewards.view(-1, group_size).float()
    std = groups.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(groups[:, :1])
    return ((groups - groups.mean(dim=1, keepdim=True)) / (std + eps)).flatten()


def k3_kl(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Per-token KL(pi || ref) estimate exp(d) - d - 1 with d = log ref - log pi (Schulman's k3)."""
    delta = ref_logprobs - logprobs
    return torch.exp(delta) - delta - 1.0


@dataclass
class GRPOStats:
    """Detached diagnostics of one loss evaluation, means over completion tokens."""

    kl: Tensor
    clip_fraction: Tensor
    ratio: Tensor


def grpo_loss(logprobs: Tensor, old_logprobs: Tensor, ref_logprobs: Tensor | None, advantages: Tensor,
              mask: Tensor, clip_eps: float = 0.2, beta: float = 0.04) -> tuple[Tensor, GRPOStats]:
    """(N, L) per-token log-probs of the policy (with graph), of the sampling policy and of the
    reference (None when beta is 0), (N,) advantages, (N, L) mask of completion tokens -> the loss.

    A clipped token is one whose ratio left [1 - e, 1 + e] in the direction its advantage pushes
    (there the gradient is zero)."""
    mask = mask.to(logprobs.dtype)
    ratio = torch.exp(logprobs - old_logprobs)
    adv = advantages[:, None].to(logprobs.dtype)
    objective = torch.min(ratio * adv, ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * adv)
    kl = k3_kl(logprobs, ref_logprobs) if ref_logprobs is not None else torch.zeros_like(logprobs)
    if beta:
        objective = objective - beta * kl
    lengths = mask.sum(dim=1).clamp(min=1.0)
    loss = -((objective * mask).sum(dim=1) / lengths).mean()
    clipped = ((ratio < 1.0 - clip_eps) & (adv < 0)) | ((ratio > 1.0 + clip_eps) & (adv > 0))
    tokens = mask.sum().clamp(min=1.0)
    with torch.no_grad():
        stats = GRPOStats(kl=(kl * mask).sum() / tokens, clip_fraction=(clipped * mask).sum() / tokens,
                          ratio=(ratio * mask).sum() / tokens)
    return loss, stats
