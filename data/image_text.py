"""Image-caption pairs from webdataset shards (`key.png|jpg`, `key.txt`) for contrastive training."""

from __future__ import annotations

import glob
import logging
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
import webdataset as wds
from torch.utils.data import DataLoader

log = logging.getLogger(__name__)


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


def _warn_and_skip(exn: Exception) -> bool:
    log.warning("skipping an unreadable sample: %s", exn)
    return True


def image_text_pipeline(urls: list[str], transform: Callable, train: bool, shuffle_buffer: int = 1000,
                        seed: int = 0) -> wds.WebDataset:
    """Decoded (pixels, caption) pairs; a corrupt image or a sample without a caption is skipped."""
    ds = wds.WebDataset(urls, shardshuffle=len(urls) if train else False, handler=_warn_and_skip,
                        empty_check=False, seed=seed,  # shards split across DDP ranks and workers
                        nodesplitter=wds.split_by_node, workersplitter=wds.split_by_worker)
    if train:
        ds = ds.shuffle(shuffle_buffer, seed=seed)  # webdataset seeds it from the clock otherwise
    return (ds.decode("pil", handler=_warn_and_skip)
              .to_tuple("png;jpg;jpeg", "txt", handler=_warn_and_skip)
              .map_tuple(transform, str.strip, handler=_warn_and_skip))


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
        Transform and tokenizer come from the model being trained.
    """

    def __init__(self, train_shards: str, val_shards: str | None = None, batch_size: int = 64,
                 eval_batch_size: int = 256, num_workers: int = 1, shuffle_buffer: int = 1000) -> None:
        super().__init__()
        self.train_urls = expand_shards(train_shards, "data.train_shards")
        self.val_urls = expand_shards(val_shards, "data.val_shards") if val_shards else None
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.shuffle_buffer = num_workers, shuffle_buffer

    def setup(self, stage: str | None = None) -> None:
        model = self.trainer.lightning_module.model
        self.transform, self.collate = model.transform(train=True), ImageTextCollator(model.tokenizer)

    def _loader(self, urls: list[str], batch_size: int, train: bool) -> DataLoader:
        ds = image_text_pipeline(urls, self.transform, train, self.shuffle_buffer)
        return DataLoader(ds, batch_size=batch_size, num_workers=self.num_workers, collate_fn=self.collate,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_urls, self.batch_size, train=True)

    def val_dataloader(self):
        return self._loader(self.val_urls, self.eval_batch_size, train=False) if self.val_urls else []
