"""A frozen copy of the starting policy, the reference DPO and GRPO score against."""

from __future__ import annotations

import copy

from torch import nn


class FrozenPolicy(nn.Module):
    """The policy deep-copied with gradients off, held in eval mode whatever `train()` asks; a
    subclass's forward says what it scores (sequence or per-token log-probabilities)."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(policy).requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenPolicy:
        return super().train(False)
