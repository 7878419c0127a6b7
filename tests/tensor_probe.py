"""A dispatch mode that records the largest tensor of each dtype any operation produces, so a test
can prove a computation never allocates, say, an fp32 tensor of the full (B, L, V) logits' size."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LargestOutputs(TorchDispatchMode):
    """`with LargestOutputs() as p: ...` then `p.numel[torch.float32]`: the most elements of one fp32 output."""

    def __init__(self) -> None:
        super().__init__()
        self.numel: dict[torch.dtype, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.numel[t.dtype] = max(self.numel.get(t.dtype, 0), t.numel())
        return out
