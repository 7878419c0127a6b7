"""Image-caption pairs from webdataset shards in img2dataset's layout (`key.jpg|jpeg|png|webp`,
`key.txt`, `key.json` metadata ignored) for contrastive training."""

from __future__ import annotations

import glob
import math
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
import webdataset as wds
from torch.utils.data import DataLoader

from data.documents import CAPTION_FORMAT, caption_pair
from data.reading import ReadChecked, SkipLog


def expand_shards(pattern: str, what: str) -> list[str]:
    """A glob (`shards/train-*.tar`), a brace pattern (`train-{000000..000003}.tar`) or one file."""
    if "{" in pattern:
        urls = list(wds.shardlists.expand_urls(pattern))
    else:
        urls = sorted(glob.glob(pattern))
    missing = [u for u in urls if not Path(u).is_file()]
    if not urls or missing:
        raise FileNotFoundError(f"{what}: no shard files match {pattern!r}" + (f" (missing {missing[0]})" if missing else "")
                                + " (write them with `chimera data shapes`)")
    return urls


def shard_stream(urls: list[str], train: bool, seed: int, handler: Callable, resampled: bool = False):
    """The shards' samples as a stream.

    Plain: every shard once per pass, shards split across DDP ranks and DataLoader workers (each
    sample read once; validation, one process). Resampled (OpenFlamingo's training mode): every
    rank and worker draws shards with replacement from all of them, seeded by (seed, rank, worker,
    pass), with no end; `fixed_epoch` then cuts an epoch of equal length on every rank, which
    split shards cannot promise (an odd shard count or unequal shards leave one rank a batch
    short, and DDP hangs at the epoch's end).
    """
    if resampled:
        stream = wds.FluidWrapper(wds.ResampledShards(urls, seed=seed, deterministic=True))
        return stream.compose(wds.tarfile_to_samples(handler=handler))
    return wds.WebDataset(urls, shardshuffle=len(urls) if train else False, handler=handler, empty_check=False,
                          seed=seed, nodesplitter=wds.split_by_node, workersplitter=wds.split_by_worker)


def fixed_epoch(stream, samples_per_epoch: int, batch_size: int, world_size: int, num_workers: int):
    """Cut a resampled stream into epochs of the same number of full batches on every rank: at least
    `samples_per_epoch` samples over all ranks (OpenFlamingo's `train_num_samples`), rounded up to
    whole batches per DataLoader worker. Its length (batches per rank) feeds the LR schedule."""
    if samples_per_epoch < 1:
        raise ValueError(f"samples_per_epoch must be >= 1, got {samples_per_epoch}")
    workers = max(1, num_workers)
    per_worker = math.ceil(samples_per_epoch / (world_size * workers * batch_size)) * batch_size
    return stream.with_epoch(per_worker).with_length(per_worker * workers, silent=True)


def check_epoch_length(samples_per_epoch: int | None, world_size: int, key: str) -> None:
    """Split shards give ranks unequal batch counts: several ranks need a fixed epoch length."""
    if world_size > 1 and samples_per_epoch is None:
        raise ValueError(f"{key}: training on {world_size} ranks reads resampled shards with a fixed epoch length "
                         "(as OpenFlamingo's train_num_samples); set it to the samples per epoch over all ranks")


class CaptionPairs:
    """Raw sample -> (transformed image, caption); picklable for DataLoader workers."""

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __call__(self, sample: dict) -> tuple:
        image, caption = caption_pair(sample)
        return self.transform(image), caption


def image_text_pipeline(urls: list[str], transform: Callable, train: bool, shuffle_buffer: int = 1000,
                        seed: int = 0, resampled: bool = False, source: str = "data.train_shards",
                        check_first: int = 100):
    """(pixels, caption) pairs; a corrupt image or a sample without a caption is skipped (warned,
    then summarised). Fails fast naming `source` when the first `check_first` samples give none."""
    ds = shard_stream(urls, train, seed, SkipLog(source).handler, resampled)
    if train:
        ds = ds.shuffle(shuffle_buffer, seed=seed)  # webdataset seeds it from the clock otherwise
    return ds.compose(ReadChecked(CaptionPairs(transform), source, CAPTION_FORMAT, check_first, keep_unusable=False))


class ImageTextCollator:
    """Stacks images and tokenizes captions with the model's own tokenizer (picklable for workers)."""

    def __init__(self, tokenize: Callable[[list[str]], torch.Tensor]) -> None:
        self.tokenize = tokenize

    def __call__(self, items: list[tuple[torch.Tensor, str]]) -> dict:
        pixels, texts = zip(*items)
        return {"pixel_values": torch.stack(pixels), "input_ids": self.tokenize(list(texts)), "texts": list(texts)}


class ImageTextDataModule(L.LightningDataModule):
    """Args:
        train_shards / val_shards: shard patterns (glob or brace); val optional.
        samples_per_epoch: train on resampled shards, this many samples per epoch over all ranks
            (needed with several ranks; `shard_stream`); None: each shard once per epoch.
        check_first: fail when this many samples read give no caption pair (a format the reader misses).
        Transform and tokenizer come from the model being trained.
    """

    def __init__(self, train_shards: str, val_shards: str | None = None, batch_size: int = 64,
                 eval_batch_size: int = 256, num_workers: int = 1, shuffle_buffer: int = 1000,
                 samples_per_epoch: int | None = None, check_first: int = 100) -> None:
        super().__init__()
        self.samples_per_epoch, self.check_first = samples_per_epoch, check_first
        self.train_urls = expand_shards(train_shards, "data.train_shards")
        self.val_urls = expand_shards(val_shards, "data.val_shards") if val_shards else None
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.shuffle_buffer = num_workers, shuffle_buffer

    def setup(self, stage: str | None = None) -> None:
        model = self.trainer.lightning_module.model
        self.transform, self.collate = model.transform(train=True), ImageTextCollator(model.tokenizer)
        if stage == "fit":
            check_epoch_length(self.samples_per_epoch, self.trainer.world_size, "data.samples_per_epoch")

    def _loader(self, urls: list[str], batch_size: int, train: bool) -> DataLoader:
        resampled = train and self.samples_per_epoch is not None
        ds = image_text_pipeline(urls, self.transform, train, self.shuffle_buffer, resampled=resampled,
                                 source="data.train_shards" if train else "data.val_shards",
                                 check_first=self.check_first)
        if resampled:
            ds = fixed_epoch(ds, self.samples_per_epoch, batch_size, self.trainer.world_size, self.num_workers)
        return DataLoader(ds, batch_size=batch_size, num_workers=self.num_workers, collate_fn=self.collate,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_urls, self.batch_size, train=True)

    def val_dataloader(self):
        return self._loader(self.val_urls, self.eval_batch_size, train=False) if self.val_urls else []
