"""Collectives that every rank reaches: what validation and exports need across processes.

Rule: nothing inside a rank-0-only branch may call a collective (`trainer.log_dir` is one, a
broadcast); values that need one are computed on every rank first, then rank 0 writes.
"""

from __future__ import annotations

import torch.distributed as dist
from lightning import Trainer


def gather_objects(trainer: Trainer, items: list) -> list:
    """Every rank's `items`, concatenated in rank order, on every rank (one all_gather_object)."""
    if trainer.world_size == 1 or not dist.is_available() or not dist.is_initialized():
        return list(items)
    per_rank: list[list | None] = [None] * trainer.world_size
    dist.all_gather_object(per_rank, list(items))
    return [item for part in per_rank for item in part]


def unique_by_index(records: list[dict]) -> list[dict]:
    """Records in dataset order, one per `index`: a distributed sampler pads each rank's share
    with repeats so every rank runs as many batches; the repeats are dropped here."""
    return list({r["index"]: r for r in sorted(records, key=lambda r: r["index"])}.values())


WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def canonical_name(name: str) -> str:
    """A parameter's name as in the unwrapped model: FSDP units, activation-checkpoint wrappers and
    torch.compile insert these path components (the same names in one process and in many)."""
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name
