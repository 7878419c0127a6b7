"""Interleaved image-text documents (MMC4-like) and Flamingo-format image-caption pairs.

A document is text chunks with images before some of them, formatted as open_flamingo does:
`{leading text}<image>{chunk}<|endofchunk|><image>{chunk}<|endofchunk|>...</s>`. Loss is on
text only: padding, `<image>` tokens and everything before the first image are masked.

Shards (`data.documents`): ours, `key.json` = {"texts": [...], "leading": "..."} with images
`key.0.png`, `key.1.jpg`, ... (image i precedes texts[i]); OpenFlamingo's MMC4 documents
(`data.mmc4`); caption pairs in img2dataset's layout (`key.jpg|jpeg|png|webp` + `key.txt`, as
LAION) read as one-image documents.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from data.collate import Collator
from data.documents import DOCUMENT_FORMATS, read_document
from data.image_text import check_epoch_length, expand_shards, fixed_epoch, shard_stream
from data.mmc4 import Mmc4Rules
from data.reading import ReadChecked, Rejected, SkipLog
from data.templates import IMAGE_TOKEN
from data.tokenize import IGNORE_INDEX
from data.writers import write_shards

END_OF_CHUNK = "<|endofchunk|>"


def flamingo_text(chunks: list[str], leading: str = "") -> str:
    return leading + "".join(f"{IMAGE_TOKEN}{c}{END_OF_CHUNK}" for c in chunks)


def tokenize_interleaved(text: str, tokenizer: PreTrainedTokenizerBase, max_length: int | None = None,
                         cut_images: bool = False) -> tuple[list[int], list[int]]:
    """BOS + text + EOS; labels mask `<image>` and every token before the first image.
    Longer than max_length: Rejected if the cut would fall after an <image>; with `cut_images`
    (OpenFlamingo's MMC4 truncation) cut anyway, and drop an <image> left last with no text."""
    ids = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if image_id not in ids:
        raise ValueError("an interleaved document needs at least one <image>")
    if max_length is not None and len(ids) > max_length:
        if image_id in ids[max_length:] and not cut_images:
            raise Rejected(f"max_length {max_length} would cut an <image> token (document has {len(ids)} tokens)")
        ids = ids[:max_length]
        while ids[-1] == image_id:
            ids.pop()
        if image_id not in ids:
            raise Rejected(f"max_length {max_length} leaves no <image> with text after it")
    first = ids.index(image_id)
    labels = [IGNORE_INDEX if (i <= first or t == image_id) else t for i, t in enumerate(ids)]
    return ids, labels


def write_interleaved_shards(out_dir: Path, split: str, docs: Iterable[tuple[list[bytes], list[str], str]],
                             shard_size: int = 500) -> list[Path]:
    """docs: (png bytes per image, text chunk per image, leading text) -> reproducible shards."""
    def samples():
        for n, (pngs, texts, leading) in enumerate(docs):
            if len(pngs) != len(texts):
                raise ValueError(f"document {n}: {len(pngs)} images for {len(texts)} text chunks")
            sample = {"__key__": f"{split}-doc-{n:06d}",
                      "json": json.dumps({"texts": texts, "leading": leading}).encode()}
            yield {**sample, **{f"{i}.png": png for i, png in enumerate(pngs)}}

    return write_shards(out_dir, f"interleaved-{split}", samples(), shard_size)


class InterleavedSamples:
    """Raw shard sample (any format of `data.documents`) -> {input_ids, labels, pixel_values
    (n_images, 3, H, W)}; MMC4 documents follow `mmc4`'s rules. Picklable."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, transform: Callable, max_length: int | None,
                 mmc4: Mmc4Rules = Mmc4Rules()) -> None:
        self.tokenizer, self.transform, self.max_length, self.mmc4 = tokenizer, transform, max_length, mmc4

    def __call__(self, sample: dict) -> dict:
        doc = read_document(sample, self.mmc4)
        ids, labels = tokenize_interleaved(flamingo_text(doc.chunks, doc.leading), self.tokenizer, self.max_length,
                                           cut_images=doc.truncate)
        kept = ids.count(self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
        if doc.truncate:
            self.mmc4.check_count(kept, sample.get("__key__", ""))
        pixels = torch.stack([self.transform(im) for im in doc.images[:kept]])
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "pixel_values": pixels}


def interleaved_pipeline(urls: list[str], to_sample: InterleavedSamples, train: bool, shuffle_buffer: int = 200,
                         seed: int = 0, resampled: bool = False, source: str = "data.train_shards",
                         check_first: int = 100):
    """Samples of the documents (None for an unreadable one, `Dropped` for one a rule leaves out:
    the collator counts both); shards split or resampled as `data.image_text.shard_stream` says.
    Fails fast naming `source` when the first `check_first` samples give nothing usable."""
    ds = shard_stream(urls, train, seed, SkipLog(source).handler, resampled)
    if train:
        ds = ds.shuffle(shuffle_buffer, seed=seed)  # webdataset seeds it from the clock otherwise
    return ds.compose(ReadChecked(to_sample, source, DOCUMENT_FORMATS, check_first))


class InterleavedDataModule(L.LightningDataModule):
    """Flamingo pretraining on interleaved documents and/or caption pairs (shard patterns,
    comma-separated to mix several); tokenizer and transform come from the model.
    `samples_per_epoch`: resampled shards, this many samples per epoch over all ranks (needed
    with several ranks; `data.image_text.shard_stream`); None: each shard once per epoch.
    `mmc4`: OpenFlamingo's placement rules and limits for MMC4 documents (`data.mmc4`).
    `check_first`: fail when this many samples read give none usable (a format the readers miss)."""

    def __init__(self, train_shards: str, batch_size: int = 16, num_workers: int = 1, max_length: int | None = 512,
                 shuffle_buffer: int = 200, samples_per_epoch: int | None = None, mmc4: Mmc4Rules = Mmc4Rules(),
                 check_first: int = 100) -> None:
        super().__init__()
        self.samples_per_epoch, self.mmc4, self.check_first = samples_per_epoch, mmc4, check_first
        self.urls = [u for pattern in train_shards.split(",") for u in expand_shards(pattern.strip(), "data.train_shards")]
        self.batch_size, self.num_workers, self.max_length, self.shuffle_buffer = (
            batch_size, num_workers, max_length, shuffle_buffer)
        self.val_qa = None

    def setup(self, stage: str | None = None) -> None:
        model = self.trainer.lightning_module.model
        self.to_sample = InterleavedSamples(model.tokenizer, model.vision.transform(train=True), self.max_length,
                                            self.mmc4)
        self.pad_id = model.tokenizer.pad_token_id
        if stage == "fit":
            check_epoch_length(self.samples_per_epoch, self.trainer.world_size, "data.samples_per_epoch")

    def train_dataloader(self) -> DataLoader:
        resampled = self.samples_per_epoch is not None
        ds = interleaved_pipeline(self.urls, self.to_sample, True, self.shuffle_buffer, resampled=resampled,
                                  check_first=self.check_first)
        if resampled:
            ds = fixed_epoch(ds, self.samples_per_epoch, self.batch_size, self.trainer.world_size, self.num_workers)
        return DataLoader(ds, batch_size=self.batch_size, num_workers=self.num_workers, collate_fn=Collator(self.pad_id),
                          persistent_workers=self.num_workers > 0)
