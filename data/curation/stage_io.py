"""The work folder that distributed curation stages share, read and written through fsspec.

Why a folder and not memory: with `chimera curate --executor local|slurm|ray` every step runs as
datatrove tasks that may sit on different nodes, so everything one stage hands to the next
(removal decisions, MinHash signatures and band keys, pHashes, embeddings, scores, candidate
pairs) is a small file under one `DataFolder`: a local path, a shared file system or an object
store URL (`s3://bucket/curation-work`) alike.

Layout, with `i` a step's position in the chain and `s` a shard's position in the input order:

    removals/step{i:02d}/{s:06d}.jsonl   {"pos", "reason", "dup"} per sample step i removed
    state/step{i:02d}/{s:06d}.npz         per-shard compact state of global step i (ids + arrays)
    pairs/step{i:02d}/{rank:05d}.npy      MinHash candidate pairs one band task kept
    global/step{i:02d}.json               statistics of a global decision (CLIP-score cut-off)
    written/{s:06d}.json                  what the write stage did with shard s (kept, removed rows, keys)

A document is named by `doc_id = shard << 32 | position`, so sorting ids sorts by input order:
"keep the first of each cluster" means the same document as in the single-process run, whatever
the number of tasks.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator

import numpy as np
from datatrove.io import DataFolder, get_datafolder

SHARD_SHIFT = 32


def doc_id(shard: int, pos: int) -> int:
    return (shard << SHARD_SHIFT) | pos


def shard_of(ids: np.ndarray) -> np.ndarray:
    return np.asarray(ids, dtype=np.int64) >> SHARD_SHIFT


def pos_of(ids: np.ndarray) -> np.ndarray:
    return np.asarray(ids, dtype=np.int64) & ((1 << SHARD_SHIFT) - 1)


def folder(path: str | DataFolder) -> DataFolder:
    return get_datafolder(path)


def removals_path(step: int, shard: int) -> str:
    return f"removals/step{step:02d}/{shard:06d}.jsonl"


def state_path(step: int, shard: int) -> str:
    return f"state/step{step:02d}/{shard:06d}.npz"


def write_removals(work: DataFolder, step: int, removed: dict[int, tuple[str, int | None]]) -> None:
    """Write a global step's decision {doc_id: (reason, dup doc_id or None)}, one file per shard."""
    by_shard: dict[int, list[tuple[int, str, int | None]]] = {}
    for doc, (reason, dup) in sorted(removed.items()):
        by_shard.setdefault(doc >> SHARD_SHIFT, []).append((doc & ((1 << SHARD_SHIFT) - 1), reason, dup))
    for shard, rows in by_shard.items():
        with work.open(removals_path(step, shard), "wt") as f:
            for pos, reason, dup in rows:
                f.write(json.dumps({"pos": pos, "reason": reason, "dup": dup}) + "\n")


def read_removals(work: DataFolder, steps: Iterable[int], shard: int) -> dict[int, tuple[int, str, int | None]]:
    """{position: (step, reason, dup doc_id)} of the samples of `shard` that `steps` removed."""
    out: dict[int, tuple[int, str, int | None]] = {}
    for step in steps:
        path = removals_path(step, shard)
        if not work.exists(path):
            continue
        with work.open(path, "rt") as f:
            for line in f:
                row = json.loads(line)
                out.setdefault(row["pos"], (step, row["reason"], row["dup"]))
    return out


def save_arrays(work: DataFolder, path: str, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with work.open(path, "wb") as f:
        f.write(buf.getvalue())


def load_arrays(work: DataFolder, path: str) -> dict[str, np.ndarray]:
    with work.open(path, "rb") as f:
        data = np.load(io.BytesIO(f.read()), allow_pickle=False)
        return {k: data[k] for k in data.files}


def state_files(work: DataFolder, step: int) -> list[str]:
    """The per-shard state files of a global step, in input (shard) order."""
    return work.list_files(f"state/step{step:02d}", glob_pattern="*.npz")


def iter_states(work: DataFolder, step: int) -> Iterator[dict[str, np.ndarray]]:
    for path in state_files(work, step):
        yield load_arrays(work, path)
