"""pHash dedup, SemDeDup and CLIP-score filtering as datatrove stages: the expensive per-image
work (decoding, hashing, CLIP forward passes) runs per shard in parallel tasks, and only the
decision that needs every sample (clustering, the top-fraction cut) is a single task that reads
the compact per-shard state (8 + 192 bytes per image, a float16 embedding, one float).

Each scan stage computes exactly what the single-process step computes for the same shard (same
functions, same per-shard batches), and each decision stage calls the same function on the
concatenation in input order, so the removals are identical (tests/test_curation_executors.py).
"""

from __future__ import annotations

import json

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from data.curation.clip_score import clip_scores, select_by_score
from data.curation.datatrove_steps import by_shard
from data.curation.image_dedup import embed_images, hash_pairs, keep_first, phash, semdedup, thumbnail
from data.curation.shards import sample_image
from data.curation.stage_io import folder, iter_states, save_arrays, state_path, write_removals

BAD_IMAGE = "missing_or_corrupt_image"


class _ImageScan(PipelineStep):
    """Per shard: decode images, save `ids`, `bad` (doc ids without a readable image) and the
    arrays `features(step, docs, images)` returns to `state/step{i}/{shard}.npz`."""

    type = "🖼 - SCAN"

    def __init__(self, step, index: int, work_dir: str) -> None:
        super().__init__()
        self.step, self.index, self.work_dir = step, index, work_dir

    def features(self, docs, images) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        work = folder(self.work_dir)
        for shard, docs in by_shard(data):
            with self.track_time():
                good, images, bad = [], [], []
                for d in docs:
                    image = sample_image(d.metadata["sample"])
                    if image is None:
                        bad.append(d.metadata["doc"])
                    else:
                        good.append(d)
                        images.append(image)
                arrays = self.features(good, images) if images else {}
                save_arrays(work, state_path(self.index, shard), ids=np.array([d.metadata["doc"] for d in good],
                                                                              dtype=np.int64),
                            bad=np.array(bad, dtype=np.int64), **arrays)
            self.stat_update("images", value=len(images))
            self.stat_update(BAD_IMAGE, value=len(bad))
        return
        yield


class PHashScan(_ImageScan):
    name = "chimera phash scan"

    def features(self, docs, images):
        out = {"hashes": np.stack([phash(im) for im in images])}
        if self.step.dedup.color_tolerance is not None:
            out["thumbs"] = np.stack([thumbnail(im) for im in images])
        return out


class EmbeddingScan(_ImageScan):
    """CLIP image embeddings (float16, as SemDedupStep keeps them)."""

    name = "chimera embedding scan"

    def features(self, docs, images):
        s = self.step
        return {"embeddings": embed_images(s.model, images, s.batch_size, s.device).astype(np.float16)}


class ClipScoreScan(_ImageScan):
    name = "chimera clip score scan"

    def features(self, docs, images):
        s = self.step
        return {"scores": clip_scores(s.model, images, [d.text for d in docs], s.batch_size, s.device)}


class _Decision(PipelineStep):
    """One task: concatenate every shard's state in input order and decide."""

    type = "🖼 - DECIDE"

    def __init__(self, step, index: int, work_dir: str) -> None:
        super().__init__()
        self.step, self.index, self.work_dir = step, index, work_dir

    def decide(self, ids: np.ndarray, state: dict[str, np.ndarray]) -> tuple[dict[int, tuple[str, int | None]], dict]:
        """({doc id: (reason, dup doc id)}, statistics for the report) from the concatenated state."""
        raise NotImplementedError

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if world_size != 1:
            raise ValueError(f"the {self.step.name} decision runs as one task, got {world_size}")
        work = folder(self.work_dir)
        parts: dict[str, list[np.ndarray]] = {}
        for state in iter_states(work, self.index):
            for k, v in state.items():
                parts.setdefault(k, []).append(v)
        state = {k: np.concatenate(v) for k, v in parts.items()}
        removed = {int(d): (BAD_IMAGE, None) for d in state.get("bad", ())}
        ids = state.pop("ids", np.zeros(0, dtype=np.int64))
        with self.track_time():
            found, stats = self.decide(ids, state) if len(ids) else ({}, {})
        removed.update(found)
        self.stat_update("removed", value=len(removed))
        write_removals(work, self.index, removed)
        if stats:
            with work.open(f"global/step{self.index:02d}.json", "wt") as f:
                json.dump(stats, f)
        return
        yield


def _dups(ids: np.ndarray, local: dict[int, int], reason: str) -> dict[int, tuple[str, int | None]]:
    return {int(ids[i]): (reason, int(ids[j])) for i, j in local.items()}


class PHashClusters(_Decision):
    name = "chimera phash clusters"

    def decide(self, ids, state):
        tol = self.step.dedup.color_tolerance
        pairs = hash_pairs(state["hashes"], self.step.dedup.max_distance)
        if tol is not None and len(pairs):
            thumbs = state["thumbs"].astype(np.int16)
            diff = np.abs(thumbs[pairs[:, 0]] - thumbs[pairs[:, 1]]).reshape(len(pairs), -1).max(1)
            pairs = pairs[diff <= tol]
        return _dups(ids, keep_first(len(ids), pairs), "near_duplicate_image"), {}


class SemDedupClusters(_Decision):
    name = "chimera semdedup clusters"

    def decide(self, ids, state):
        s = self.step
        return _dups(ids, semdedup(state["embeddings"], s.eps, s.clusters, s.seed), "semantic_duplicate"), {}


class ClipScoreSelect(_Decision):
    name = "chimera clip score cut"

    def decide(self, ids, state):
        s, scores = self.step, state["scores"]
        keep = select_by_score(scores, s.threshold, s.top_fraction)
        stats = {"score_mean": float(scores.mean()), "score_min": float(scores.min()),
                 "score_max": float(scores.max()), "cutoff": float(scores[keep].min()) if keep.any() else None}
        reason = "clip_score_below_threshold" if s.threshold is not None else "clip_score_not_top_fraction"
        return {int(ids[i]): (reason, None) for i in np.flatnonzero(~keep)}, stats
