"""Data mixtures: draw samples from several shard sets by weight, deterministic and resumable.

Why: the GPT-3 recipe up-weights small high-quality corpora relative to their size, and
multilingual/multi-source training uses temperature sampling (p_i proportional to
n_i^(1/T): T=1 is size-proportional, T->inf uniform; Arivazhagan et al. 2019, XLM-R) so
small sources are neither drowned nor repeated to death. Mixing belongs in the data stream
rather than in pre-shuffled copies, so weights can change without rewriting data.

Determinism: the source of sample t is drawn from a generator seeded by (seed, t // BLOCK),
and each source's epoch e visits its shards in a permutation seeded by (seed, source, e).
The state is therefore a few integers (`step`, and per source `epoch`, `offset`): a stream
restored from `state_dict()` yields exactly the samples an uninterrupted one would.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from data.curation.shards import expand, read_shard, sample_image, sample_text

BLOCK = 4096


def mixture_probabilities(sizes: Mapping[str, int] | None = None, weights: Mapping[str, float] | None = None,
                          temperature: float | None = None, names: Sequence[str] | None = None) -> dict[str, float]:
    """Per-source sampling probabilities: explicit `weights` (normalised), or temperature
    sampling over `sizes` (p_i ~ n_i^(1/T); T=1 when only sizes are given)."""
    if weights is not None:
        if any(w < 0 for w in weights.values()) or not sum(weights.values()) > 0:
            raise ValueError(f"mixture weights must be >= 0 with a positive sum, got {dict(weights)}")
        total = sum(weights.values())
        return {k: float(w) / total for k, w in weights.items()}
    if sizes is None:
        if names is None:
            raise ValueError("need weights, sizes or names")
        return {k: 1.0 / len(names) for k in names}
    t = 1.0 if temperature is None else float(temperature)
    if t <= 0:
        raise ValueError(f"temperature must be > 0, got {t}")
    raw = {k: float(n) ** (1.0 / t) for k, n in sizes.items()}
    total = sum(raw.values())
    if not total > 0:
        raise ValueError(f"every source is empty: {dict(sizes)}")
    return {k: v / total for k, v in raw.items()}


class MixtureStream:
    """Iterable over samples mixed from several sources.

    Args:
        sources: name -> list of shards; a shard is a path (read with `read_shard`) or an
            in-memory list of samples.
        weights / temperature / sizes: see `mixture_probabilities` (sizes are counted by
            reading the shards when temperature sampling needs them and none are given).
        seed: fixes both the source sequence and the shard orders.
        shuffle_shards: visit each source's shards in a new order every epoch.
        num_samples: stop after this many (None: endless; sources are cycled).

    Yielded dict samples get `__source__` (the source name). `state_dict()` after k samples
    have been taken, loaded into a fresh stream, continues with sample k + 1.
    """

    def __init__(self, sources: Mapping[str, Sequence], weights: Mapping[str, float] | None = None,
                 temperature: float | None = None, sizes: Mapping[str, int] | None = None, seed: int = 0,
                 shuffle_shards: bool = True, num_samples: int | None = None) -> None:
        self.names = list(sources)
        if not self.names:
            raise ValueError("a mixture needs at least one source")
        self.sources = {k: list(v) for k, v in sources.items()}
        empty = [k for k, v in self.sources.items() if not v]
        if empty:
            raise ValueError(f"mixture source(s) without shards: {empty}")
        if weights is not None and set(weights) != set(self.names):
            raise ValueError(f"mixture weights name {sorted(weights)} but sources are {sorted(self.names)}")
        if weights is None and temperature is not None and sizes is None:
            sizes = {k: sum(len(self._load(s)) for s in v) for k, v in self.sources.items()}
        self.probabilities = mixture_probabilities(sizes, weights, temperature, self.names)
        self._p = np.array([self.probabilities[k] for k in self.names])
        self.seed, self.shuffle_shards, self.num_samples = seed, shuffle_shards, num_samples
        self.step = 0
        self.positions = {k: [0, 0] for k in self.names}  # epoch, samples consumed in that epoch

    @staticmethod
    def _load(shard) -> list:
        return read_shard(shard) if isinstance(shard, (str, Path)) else list(shard)

    def state_dict(self) -> dict:
        return {"step": self.step, "positions": {k: list(v) for k, v in self.positions.items()},
                "seed": self.seed, "probabilities": dict(self.probabilities)}

    def load_state_dict(self, state: Mapping) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"mixture state was saved with seed {state['seed']}, this stream has {self.seed}")
        self.step = int(state["step"])
        self.positions = {k: [int(e), int(o)] for k, (e, o) in state["positions"].items()}

    def _shard_order(self, source: int, epoch: int) -> list[int]:
        n = len(self.sources[self.names[source]])
        if not self.shuffle_shards:
            return list(range(n))
        return np.random.default_rng([self.seed, source, epoch]).permutation(n).tolist()

    def _source_iter(self, source: int) -> Iterator:
        """Endless samples of one source, starting at its saved (epoch, offset)."""
        name = self.names[source]
        epoch, offset = self.positions[name]
        while True:
            produced = False
            skip = offset
            for shard_id in self._shard_order(source, epoch):
                shard = self._load(self.sources[name][shard_id])
                if skip >= len(shard):  # resuming: skip whole shards without iterating them
                    skip -= len(shard)
                    continue
                for sample in shard[skip:]:
                    produced = True
                    yield epoch, sample
                skip = 0
                del shard
            if not produced and offset == 0:
                raise ValueError(f"mixture source {name!r} has no samples")
            epoch, offset = epoch + 1, 0

    def _choices(self, block: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 1 << 20, block]).choice(len(self.names), size=BLOCK, p=self._p)

    def __iter__(self) -> Iterator:
        iters: dict[int, Iterator] = {}
        block, choices = -1, None
        while self.num_samples is None or self.step < self.num_samples:
            if self.step // BLOCK != block:
                block = self.step // BLOCK
                choices = self._choices(block)
            source = int(choices[self.step % BLOCK])
            if source not in iters:
                iters[source] = self._source_iter(source)
            epoch, sample = next(iters[source])
            name = self.names[source]
            pos = self.positions[name]
            pos[:] = [epoch, pos[1] + 1] if pos[0] == epoch else [epoch, 1]
            self.step += 1
            if isinstance(sample, dict):
                sample = {**sample, "__source__": name}
            yield sample


def read_manifest(path: str | Path) -> dict:
    """A `mixture.json` written by `chimera curate`: {"sources": {name: {"shards": [...],
    "samples": n}}, "weights": {...} | None, "temperature": T | None, "seed": s}."""
    return json.loads(Path(path).read_text())


def stream_from_manifest(manifest: str | Path | Mapping, **overrides) -> MixtureStream:
    m = read_manifest(manifest) if isinstance(manifest, (str, Path)) else dict(manifest)
    sources = {k: v["shards"] for k, v in m["sources"].items() if v["shards"]}
    sizes = {k: m["sources"][k].get("samples", 0) for k in sources}
    weights = m.get("weights")
    kwargs = {"weights": {k: weights[k] for k in sources} if weights else None,
              "temperature": m.get("temperature"), "sizes": sizes, "seed": m.get("seed", 0)}
    kwargs.update(overrides)
    return MixtureStream(sources, **kwargs)


@functools.cache
def _image_text_dataset():
    import torch

    class MixtureImageTextDataset(torch.utils.data.IterableDataset):
        """(pixels, caption) pairs from a `MixtureStream`; with several DataLoader workers each
        takes every k-th sample of the same deterministic stream, so none is seen twice."""

        def __init__(self, stream: MixtureStream, transform) -> None:
            self.stream, self.transform = stream, transform

        def __iter__(self):
            info = torch.utils.data.get_worker_info()
            wid, nw = (info.id, info.num_workers) if info else (0, 1)
            for i, sample in enumerate(self.stream):
                if i % nw != wid:
                    continue
                image = sample_image(sample)
                if image is None:  # corrupt or missing image: skipped, as image_text_pipeline does
                    continue
                yield self.transform(image), sample_text(sample).strip()

    return MixtureImageTextDataset


@functools.cache
def _datamodule_class():
    import lightning as L
    from torch.utils.data import DataLoader

    from data.image_text import ImageTextCollator, expand_shards, image_text_pipeline

    class MixtureImageTextDataModule(L.LightningDataModule):
        """Image-text training on a weighted mix of shard sets (a drop-in for
        `data.image_text.ImageTextDataModule`).

        Args:
            train_sources: name -> shard pattern (glob/brace), e.g. {"clean": "cur/train/*.tar",
                "web": "raw/*.tar"}; or `manifest`: a `mixture.json` from `chimera curate`.
            weights / temperature / seed: the mixture (see `MixtureStream`).
            The stream is endless, so train with `max_steps`. With `num_workers=0` the
            stream position is saved in checkpoints and restored on resume.
        """

        def __init__(self, train_sources: dict[str, str] | None = None, manifest: str | None = None,
                     weights: dict[str, float] | None = None, temperature: float | None = None, seed: int = 0,
                     val_shards: str | None = None, batch_size: int = 64, eval_batch_size: int = 256,
                     num_workers: int = 0) -> None:
            super().__init__()
            if (train_sources is None) == (manifest is None):
                raise ValueError("give exactly one of data.train_sources and data.manifest")
            if manifest is not None:
                self.stream = stream_from_manifest(manifest, **({"weights": weights} if weights else {}),
                                                   **({"temperature": temperature} if temperature else {}),
                                                   seed=seed)
            else:
                self.stream = MixtureStream({k: expand(v) for k, v in train_sources.items()}, weights=weights,
                                            temperature=temperature, seed=seed)
            self.val_urls = expand_shards(val_shards, "data.val_shards") if val_shards else None
            self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers

        def setup(self, stage: str | None = None) -> None:
            model = self.trainer.lightning_module.model
            self.transform, self.collate = model.transform(train=True), ImageTextCollator(model.tokenizer)

        def train_dataloader(self) -> DataLoader:
            ds = _image_text_dataset()(self.stream, self.transform)
            return DataLoader(ds, batch_size=self.batch_size, num_workers=self.num_workers, collate_fn=self.collate)

        def val_dataloader(self):
            if not self.val_urls:
                return []
            ds = image_text_pipeline(self.val_urls, self.transform, train=False)
            return DataLoader(ds, batch_size=self.eval_batch_size, num_workers=self.num_workers,
                              collate_fn=self.collate)

        def state_dict(self) -> dict:
            return {"mixture": self.stream.state_dict()}

        def load_state_dict(self, state: dict) -> None:
            if "mixture" in state:
                self.stream.load_state_dict(state["mixture"])

    return MixtureImageTextDataModule


def __getattr__(name: str):
    # Lightning/torch are imported only when the data module is asked for, so curation
    # (and `chimera curate`) stays light.
    if name == "MixtureImageTextDataModule":
        return _datamodule_class()
    if name == "MixtureImageTextDataset":
        return _image_text_dataset()
    raise AttributeError(name)
