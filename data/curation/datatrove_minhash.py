"""MinHash LSH dedup as three datatrove stages: signatures (per shard, parallel), band pairs
(per band, parallel), clusters (one task).

Why not datatrove's own `MinhashDedupSignature/Buckets/Cluster`: its signatures are computed
one document at a time in Python (ours, `MinHasher`, are batched numpy and ~11-13x faster per
core, scripts/bench_dedup.py), its buckets compare raw band tuples without the estimated-Jaccard
check our `verify` option adds, and its clusters keep whichever document union-by-size makes
the root, not the first one. These stages keep datatrove's shape (signature files per task,
bucket tasks over bands, a single cluster task that writes per-shard removal lists read by the
next stage) and reproduce `MinHashDeduper.finish()` exactly:

* band keys and signatures come from the step's own `MinHashDeduper` (its hasher, bands, rows),
  so any option of the single-process step applies unchanged;
* a band task sorts the band's keys by (key, doc id) and pairs each bucket's first document with
  every other member (`candidate_pairs`), then drops pairs whose estimated Jaccard is below the
  threshold when `verify`, reading only the signature rows it needs;
* the cluster task takes connected components over all kept pairs; the root is the smallest doc
  id, i.e. the first document in input order, which is what the single-process run keeps.
"""

from __future__ import annotations

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from data.curation.datatrove_steps import by_shard
from data.curation.minhash import band_keys, connected_components, estimate_jaccard
from data.curation.stage_io import (folder, iter_states, load_arrays, save_arrays, shard_of, state_files,
                                    state_path, write_removals)

REASON = "near_duplicate_text"


class MinhashSignatures(PipelineStep):
    """Per shard: `state/step{i}/{shard}.npz` with doc ids, band keys (n, bands) and, with verify,
    signatures (n, num_perm) uint32; computed in one batch per shard."""

    type = "🫂 - DEDUP"
    name = "chimera minhash signatures"

    def __init__(self, step, index: int, work_dir: str) -> None:
        super().__init__()
        self.dedup, self.index, self.work_dir = step.dedup, index, work_dir

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        work = folder(self.work_dir)
        for shard, docs in by_shard(data):
            with self.track_time():
                sig = self.dedup.hasher.signatures([d.text for d in docs])
                arrays = {"ids": np.array([d.metadata["doc"] for d in docs], dtype=np.int64),
                          "keys": band_keys(sig, self.dedup.bands, self.dedup.rows)}
                if self.dedup.verify:
                    arrays["sigs"] = sig
                save_arrays(work, state_path(self.index, shard), **arrays)
            self.stat_update("documents", value=len(docs))
        return
        yield


class MinhashBandPairs(PipelineStep):
    """Task `rank` of `world_size` handles bands rank, rank + world_size, ...; writes its
    (verified) candidate pairs of doc ids to `pairs/step{i}/{rank}.npy`."""

    type = "🫂 - DEDUP"
    name = "chimera minhash band pairs"

    def __init__(self, step, index: int, work_dir: str) -> None:
        super().__init__()
        self.dedup, self.index, self.work_dir = step.dedup, index, work_dir

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        work = folder(self.work_dir)
        bands = list(range(rank, self.dedup.bands, world_size))
        ids, keys = [], []
        for state in iter_states(work, self.index):  # only this task's band columns stay in memory
            ids.append(state["ids"])
            keys.append(state["keys"][:, bands])
        pairs = np.zeros((0, 2), dtype=np.int64)
        if ids and bands:
            with self.track_time():
                pairs = self._pairs(np.concatenate(ids), np.concatenate(keys))
                if self.dedup.verify and len(pairs):
                    pairs = pairs[self._similar(work, pairs)]
        self.stat_update("pairs", value=len(pairs))
        with work.open(f"pairs/step{self.index:02d}/{rank:05d}.npy", "wb") as f:
            np.save(f, pairs)
        return
        yield

    @staticmethod
    def _pairs(ids: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """(first member of a bucket, other member) over the bands, as doc ids, deduplicated."""
        out = []
        for j in range(keys.shape[1]):
            order = np.lexsort((ids, keys[:, j]))
            sk, sid = keys[order, j], ids[order]
            start = np.ones(len(sk), dtype=bool)
            start[1:] = sk[1:] != sk[:-1]
            first = sid[np.maximum.accumulate(np.where(start, np.arange(len(sk)), 0))]
            if (~start).any():
                out.append(np.stack([first[~start], sid[~start]], axis=1))
        return np.unique(np.concatenate(out), axis=0) if out else np.zeros((0, 2), dtype=np.int64)

    def _similar(self, work, pairs: np.ndarray) -> np.ndarray:
        """Keep-mask: estimated Jaccard >= threshold, reading only the needed signature rows."""
        needed = np.unique(pairs)
        rows = np.empty((len(needed), self.dedup.hasher.num_perm), dtype=np.uint32)
        shards = shard_of(needed)
        for path in state_files(work, self.index):
            shard = int(path.rsplit("/", 1)[-1].split(".")[0])
            mine = np.flatnonzero(shards == shard)
            if len(mine):
                state = load_arrays(work, path)
                rows[mine] = state["sigs"][np.searchsorted(state["ids"], needed[mine])]
        a, b = np.searchsorted(needed, pairs[:, 0]), np.searchsorted(needed, pairs[:, 1])
        return estimate_jaccard(rows[a], rows[b]) >= self.dedup.threshold


class MinhashClusters(PipelineStep):
    """One task: connected components over every band task's pairs; each component's first
    document is kept, the others are written to `removals/step{i}/{shard}.jsonl`."""

    type = "🫂 - DEDUP"
    name = "chimera minhash clusters"

    def __init__(self, index: int, work_dir: str) -> None:
        super().__init__()
        self.index, self.work_dir = index, work_dir

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if world_size != 1:
            raise ValueError(f"the MinHash cluster stage runs as one task, got {world_size}")
        work = folder(self.work_dir)
        parts = []
        for path in work.list_files(f"pairs/step{self.index:02d}", glob_pattern="*.npy"):
            with work.open(path, "rb") as f:
                parts.append(np.load(f))
        pairs = np.unique(np.concatenate(parts), axis=0) if parts else np.zeros((0, 2), dtype=np.int64)
        with self.track_time():
            nodes = np.unique(pairs)
            root = connected_components(len(nodes), np.searchsorted(nodes, pairs))
            dup = np.flatnonzero(root != np.arange(len(nodes)))
        self.stat_update("removed", value=len(dup))
        write_removals(work, self.index, {int(nodes[d]): (REASON, int(nodes[root[d]])) for d in dup})
        return
        yield
