"""A shuffling, rank-sharding sampler whose position survives a checkpoint, so a resumed run sees
exactly the batches an uninterrupted run would, at any world size.

Lightning restarts an interrupted epoch's loader from the top and, under DDP/FSDP, wraps any
sampler that is not a `DistributedSampler` in its own (whose index count must never change).
This sampler is a `DistributedSampler`, so Lightning leaves it alone and calls `set_epoch`; it
shards by rank itself, its length is the same every epoch (what the LR schedule and Lightning's
epoch loop count), and it skips what the run had consumed, counted in global samples.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import DistributedSampler


class ResumableSampler(DistributedSampler):
    """Yields `(index, epoch)` for this rank: the epoch's permutation is fixed by (seed, epoch) and
    padded by wrapping to a multiple of the world size (every rank gets as many samples, so no
    rank waits at the epoch's end); rank r takes positions r, r + W, r + 2W, ... Global position
    p of the permutation is consumed once every rank has taken ceil((p + 1) / W) samples, so a
    position stored by one world size resumes under another. The epoch travels with the index so
    per-visit randomness (sampled turns) replays exactly."""

    def __init__(self, num_samples: int, seed: int = 0, shuffle: bool = True, num_replicas: int = 1,
                 rank: int = 0) -> None:
        if num_samples < 1:
            raise ValueError("the training set is empty: nothing to sample")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside a world of {num_replicas}")
        # DistributedSampler's own __init__ wants a dataset and an initialised process group
        self.dataset_size, self.seed, self.shuffle = num_samples, seed, shuffle
        self.num_replicas, self.rank, self.drop_last = num_replicas, rank, False
        self.num_samples = math.ceil(num_samples / num_replicas)  # per rank, every epoch
        self.total_size = self.num_samples * num_replicas
        self.epoch, self.start = 0, 0  # start: global positions of `epoch` already consumed

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.start = epoch, 0

    def order(self, epoch: int) -> list[int]:
        """The epoch's global order, padded to `total_size` by wrapping."""
        if self.shuffle:
            order = torch.randperm(self.dataset_size, generator=torch.Generator().manual_seed(self.seed + epoch))
        else:
            order = torch.arange(self.dataset_size)
        order = order.tolist()
        return (order * math.ceil(self.total_size / len(order)))[: self.total_size]

    def __iter__(self):
        epoch, start = self.epoch, self.start
        self.start = 0  # a second iterator of the same epoch (no resume) starts at the top
        order = self.order(epoch)
        for i in order[start + self.rank:: self.num_replicas]:
            yield i, epoch

    def resume_at(self, epoch: int, consumed: int) -> None:
        """Continue `epoch` after its first `consumed` global positions; a finished epoch moves on."""
        if consumed >= self.total_size:
            epoch, consumed = epoch + 1, 0
        # a position inside a round of W samples rounds down: each rank restarts at its next sample
        self.epoch, self.start = epoch, consumed - consumed % self.num_replicas
