"""Several named data sources, one batch from each every training step, each with a loss weight.

Why: OpenFlamingo pretrains on LAION caption pairs and MMC4 interleaved documents with a
separate batch from each source every step (64 / 32) and loss = 0.2 * loss_laion + 1.0 *
loss_mmc4. That is not a sampling mixture (`data/curation/mixtures.py` draws each sample
from one source by probability): here every step sees every source, and the weights scale
losses, not frequencies. Every source reads any shard format of `data.documents` in Flamingo
format (`data/interleaved.py`): a caption pair (img2dataset / LAION) is the one-image document
`<image>caption<|endofchunk|>`, an MMC4 json follows OpenFlamingo's placement (`data.mmc4`).

A step's batch is `{name: batch}` (Lightning's CombinedLoader); each source's batch carries its
`loss_weight`, so the training step needs nothing but the batch (`split_sources`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import lightning as L
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader

from data.collate import Collator
from data.image_text import check_epoch_length, expand_shards, fixed_epoch
from data.interleaved import END_OF_CHUNK, InterleavedSamples, interleaved_pipeline
from data.mmc4 import Mmc4Rules

NAME = re.compile(r"^[A-Za-z0-9_]+$")  # it becomes a metric key: train/loss_<name>


@dataclass
class Source:
    """shards: glob or brace pattern(s), comma-separated; caption and/or interleaved shards.
    weight: multiplies this source's loss (>= 0; 0 reads it, logs its loss, trains nothing on it).
    max_length: tokens per sample for this source; None: the data module's (open_flamingo: 32 for
    LAION captions, 256 for MMC4 documents).
    samples_per_epoch: read resampled shards, this many samples of this source per epoch over all
    ranks (open_flamingo's train_num_samples_laion / _mmc4; needed with several ranks, see
    `data.image_text.shard_stream`); None: each shard once per epoch.
    mmc4: placement rules and limits for this source's MMC4 documents (OpenFlamingo's defaults,
    `data.mmc4.Mmc4Rules`), e.g. {sim_threshold: 0.24, max_images: 6}."""

    shards: str
    weight: float = 1.0
    batch_size: int = 16
    max_length: int | None = None
    samples_per_epoch: int | None = None
    mmc4: Mmc4Rules = field(default_factory=Mmc4Rules)

    def __post_init__(self) -> None:
        if isinstance(self.mmc4, dict):
            self.mmc4 = Mmc4Rules(**self.mmc4)


class WeightedCollator:
    """The usual collation, plus the source's loss weight on the batch (picklable for workers)."""

    def __init__(self, collate: Callable[[list], dict], weight: float) -> None:
        self.collate, self.weight = collate, weight

    def __call__(self, items: list) -> dict:
        return {**self.collate(items), "loss_weight": self.weight}


def split_sources(batch: dict) -> dict[str, tuple[float, dict]]:
    """name -> (loss weight, batch); a plain single-source batch is {"": (1.0, batch)}."""
    if batch and all(isinstance(v, dict) and "loss_weight" in v for v in batch.values()):
        return {name: (float(part["loss_weight"]), part) for name, part in batch.items()}
    return {"": (1.0, batch)}


class MultiSourceDataModule(L.LightningDataModule):
    """Flamingo pretraining on named sources, e.g.
    `sources: {laion: {shards: ..., weight: 0.2, batch_size: 64}, mmc4: {shards: ..., weight: 1.0, batch_size: 32}}`.

    mode: `max_size_cycle` restarts a source that runs out until the longest one is done (an
    epoch is the longest source); `min_size` ends the epoch with the shortest. Each source gets
    its own DataLoader with `num_workers` workers. `max_length` applies to sources without their
    own. `check_first`: a source whose first this many samples give none usable fails, naming
    the formats expected and the keys found. Tokenizer and transform come from the model.
    """

    def __init__(self, sources: dict[str, Source], num_workers: int = 1, max_length: int | None = 512,
                 shuffle_buffer: int = 200, mode: Literal["max_size_cycle", "min_size"] = "max_size_cycle",
                 check_first: int = 100) -> None:
        super().__init__()
        if not sources:
            raise ValueError("data.sources is empty: name at least one source, e.g. {mmc4: {shards: ...}}")
        self.sources = {name: Source(**s) if isinstance(s, dict) else s for name, s in sources.items()}
        self.urls: dict[str, list[str]] = {}
        for name, src in self.sources.items():
            key = f"data.sources.{name}"
            if not NAME.match(name):
                raise ValueError(f"{key}: a source name may only hold letters, digits and '_' "
                                 f"(it names the metric train/loss_{name})")
            if not (math.isfinite(src.weight) and src.weight >= 0):
                raise ValueError(f"{key}.weight must be a finite number >= 0, got {src.weight}")
            if src.batch_size < 1:
                raise ValueError(f"{key}.batch_size must be >= 1, got {src.batch_size}")
            if src.max_length is not None and src.max_length < 2:
                raise ValueError(f"{key}.max_length must be >= 2 (BOS and <image>) or null, got {src.max_length}")
            self.urls[name] = [u for pattern in src.shards.split(",")
                               for u in expand_shards(pattern.strip(), f"{key}.shards")]
        self.num_workers, self.max_length, self.shuffle_buffer = num_workers, max_length, shuffle_buffer
        self.mode, self.check_first = mode, check_first
        self.val_qa = None

    def setup(self, stage: str | None = None) -> None:
        self.prepare_for(self.trainer.lightning_module.model)
        if stage == "fit":
            for name, src in self.sources.items():
                check_epoch_length(src.samples_per_epoch, self.trainer.world_size,
                                   f"data.sources.{name}.samples_per_epoch")

    def prepare_for(self, model) -> None:
        """Read samples with this model's tokenizer and image transform."""
        if END_OF_CHUNK not in model.tokenizer.get_vocab():
            raise ValueError(f"MultiSourceDataModule reads Flamingo-format documents; the model's tokenizer has no "
                             f"{END_OF_CHUNK} token ({type(model).__name__} is not a Flamingo)")
        transform = model.vision.transform(train=True)
        self.to_sample = {}
        for name, src in self.sources.items():
            length = self.max_length if src.max_length is None else src.max_length
            self.to_sample[name] = InterleavedSamples(model.tokenizer, transform, length, src.mmc4)
        self.pad_id = model.tokenizer.pad_token_id

    def _loader(self, name: str) -> DataLoader:
        src = self.sources[name]
        resampled = src.samples_per_epoch is not None
        ds = interleaved_pipeline(self.urls[name], self.to_sample[name], True, self.shuffle_buffer, resampled=resampled,
                                  source=f"data.sources.{name}", check_first=self.check_first)
        if resampled:
            ds = fixed_epoch(ds, src.samples_per_epoch, src.batch_size, self.trainer.world_size, self.num_workers)
        return DataLoader(ds, batch_size=src.batch_size, num_workers=self.num_workers,
                          collate_fn=WeightedCollator(Collator(self.pad_id), src.weight),
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> CombinedLoader:
        return CombinedLoader({name: self._loader(name) for name in self.sources}, mode=self.mode)
