"""Building a model with no storage, on ranks that receive their weights from rank 0.

Under FSDP every rank but 0 builds its model inside `torch.device("meta")`: shapes and
dtypes, no storage, no weight file read. While wrapping, FSDP gives each unit's tensors
empty storage (`MaterializeEmpty`); then rank 0's values are broadcast into every unit
(`train.strategies.take_rank0_values`), so the host holds one copy of the weights, on rank 0,
instead of one per GPU (`train.strategies.FSDP(init_on_rank0=True)`, chosen by `train.fit_cli`).

Classes that load pretrained weights ask `on_meta()` and then build from the checkpoint's
config alone: transformers refuses `from_pretrained` under a meta device, and reading the
weights there would cost the host memory this saves.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def on_meta() -> bool:
    """True inside `with torch.device("meta")`: build the architecture, read no weights."""
    return torch.get_default_device().type == "meta"


def has_meta_tensors(module: nn.Module) -> bool:
    return any(t.is_meta for t in (*module.parameters(), *module.buffers()))


class MaterializeEmpty:
    """FSDP `param_init_fn`: a module's own meta parameters and buffers get empty storage on `device`.

    Tied weights stay tied: a meta tensor shared by two modules (an LM head tied to the
    embeddings) becomes one materialised tensor, as on the rank that built it for real, so
    every rank flattens the same parameters. Values are garbage until rank 0's are broadcast
    over them. `device` is a callable (the strategy's root device, known only
    once the strategy is set up).
    """

    def __init__(self, device) -> None:
        self.device = device
        self.made: dict[int, tuple[Tensor, Tensor]] = {}  # id(meta) -> (meta kept alive, materialised)

    def _empty(self, t: Tensor) -> Tensor:
        hit = self.made.get(id(t))
        if hit is None:
            fresh = torch.empty_like(t, device=self.device())
            if isinstance(t, nn.Parameter):
                fresh = nn.Parameter(fresh, requires_grad=t.requires_grad)
            hit = self.made[id(t)] = (t, fresh)
        return hit[1]

    def __call__(self, module: nn.Module) -> None:
        for name, p in module._parameters.items():
            if p is not None and p.is_meta:
                module._parameters[name] = self._empty(p)
        for name, b in module._buffers.items():
            if b is not None and b.is_meta:
                module._buffers[name] = self._empty(b)
