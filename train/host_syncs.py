"""Count the operations that make the host wait for the device.

On a GPU these block the Python thread until every queued kernel has run (a `.item()`,
a boolean-mask index whose output size depends on data, `repeat_interleave` without an
`output_size`), and under `torch.compile` each one is a graph break or a dynamic shape.
The same aten calls happen on the CPU, so a CPU test can prove a step is sync-free.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# Ops whose result the host needs (a scalar) or whose output shape depends on tensor values.
SYNC_OPS = {
    aten._local_scalar_dense.default: "item",
    aten.nonzero.default: "nonzero",
    aten.masked_select.default: "masked_select",
    aten.unique_consecutive.default: "unique",
    aten._unique2.default: "unique",
    aten.repeat_interleave.Tensor: "repeat_interleave",
}
# Indexing with a boolean mask finds the True positions first (an implicit nonzero).
MASK_INDEX_OPS = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}


def _has_mask_index(indices) -> bool:
    return any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices)


class HostSyncCounter(TorchDispatchMode):
    """`with HostSyncCounter() as c: step()` then `c.total` / `c.by_op` (name -> count).

    `repeat_interleave` counts only without `output_size` (with it, no value is read);
    indexing counts only with a boolean mask.
    """

    def __init__(self) -> None:
        super().__init__()
        self.by_op: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.by_op.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = SYNC_OPS.get(func)
        if name is not None and not (name == "repeat_interleave" and kwargs.get("output_size") is not None):
            self.by_op[name] += 1
        elif func in MASK_INDEX_OPS and _has_mask_index(args[1]):
            self.by_op["mask_index"] += 1
        return func(*args, **kwargs)
