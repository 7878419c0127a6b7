"""A shuffling sampler whose position survives a checkpoint, so a resumed run sees exactly the
batches an uninterrupted run would (Lightning restarts an interrupted epoch's loader from the
top; this sampler skips what was already consumed)."""

from __future__ import annotations

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[tuple[int, int]]):
    """Yields `(index, epoch)`: the permutation of each epoch is fixed by (seed, epoch), and the
    epoch travels with the index so per-visit randomness (sampled turns) is reproducible too."""

    def __init__(self, num_samples: int, seed: int = 0, shuffle: bool = True) -> None:
        self.num_samples, self.seed, self.shuffle = num_samples, seed, shuffle
        self.epoch, self.start = 0, 0

    def __len__(self) -> int:
        return self.num_samples - self.start

    def __iter__(self):
        epoch, start = self.epoch, self.start
        self.epoch, self.start = epoch + 1, 0  # the next iterator is the next epoch
        if self.shuffle:
            order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(self.seed + epoch))
        else:
            order = torch.arange(self.num_samples)
        for i in order[start:].tolist():
            yield i, epoch

    def resume_at(self, epoch: int, consumed: int) -> None:
        self.epoch, self.start = epoch, consumed
