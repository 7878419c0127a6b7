"""`chimera curate`'s reader, filters and writers as datatrove `PipelineStep`s.

Why datatrove: it already runs a list of steps as N tasks on a local process pool, a Slurm job
array or a Ray cluster, with resumable task completion; we contribute the steps. Each step
wraps the single-process implementation (`data.curation.curate` steps, `shards` I/O), so a
rule lives in one place and the distributed run decides exactly what the single-process one
does (tests/test_curation_executors.py checks byte-identical outputs).

A task handles the shards `rank, rank + world_size, ...` of the input list. Documents carry
`metadata = {"shard", "shard_file", "pos", "doc", "sample"}`; `doc` (see `stage_io.doc_id`)
orders documents as the single-process run numbers them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter

from data.curation.shards import read_shard, sample_text, write_shard
from data.curation.stage_io import doc_id, folder, read_removals, removals_path


def by_shard(data: DocumentsPipeline) -> Iterator[tuple[int, list[Document]]]:
    """Consecutive documents of the same shard, as (shard, documents): readers emit shard by shard."""
    shard, batch = None, []
    for doc in data or ():
        if doc.metadata["shard"] != shard and batch:
            yield shard, batch
            batch = []
        shard = doc.metadata["shard"]
        batch.append(doc)
    if batch:
        yield shard, batch


class ShardReader(PipelineStep):
    """Reads this task's webdataset/JSONL shards into Documents.

    removed_by: steps whose removals are skipped (the earlier passes).
    annotate: instead of skipping, emit every sample with `metadata["removed"] =
        (step, reason, dup doc_id)` or None (for the write stage).
    """

    type = "📖 - READER"
    name = "chimera shards"

    def __init__(self, shards: Sequence[tuple[str, str]], work_dir: str, removed_by: Sequence[int] = (),
                 text_field: str = "text", annotate: bool = False) -> None:
        super().__init__()
        self.shards, self.work_dir, self.removed_by = list(shards), work_dir, list(removed_by)
        self.text_field, self.annotate = text_field, annotate

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        work = folder(self.work_dir)
        for shard in range(rank, len(self.shards), world_size):
            source, url = self.shards[shard]
            removed = read_removals(work, self.removed_by, shard)
            with self.track_time():
                samples = read_shard(url, self.text_field)
            for pos, sample in enumerate(samples):
                if pos in removed and not self.annotate:
                    continue
                self.stat_update("documents")
                meta = {"shard": shard, "shard_file": f"{shard:06d}", "pos": pos, "doc": doc_id(shard, pos),
                        "source": source, "sample": sample}
                if self.annotate:
                    meta["removed"] = removed.get(pos)
                yield Document(text=sample_text(sample), id=sample["__key__"], metadata=meta)


class RemovalLog(DiskWriter):
    """Exclusion writer of a filter: one `removals/step{i}/{shard}.jsonl` per shard with its
    removed positions and reasons (what later passes skip and the write stage logs)."""

    name = "chimera removals"

    def __init__(self, work_dir: str, step: int) -> None:
        template = removals_path(step, 0).replace("000000.jsonl", "${shard_file}.jsonl")
        super().__init__(folder(work_dir), output_filename=template, compression=None, adapter=_removal_row)

    def _write(self, document: dict, file_handler: IO, filename: str) -> None:
        file_handler.write(json.dumps(document) + "\n")


def _removal_row(self, doc: Document) -> dict:
    return {"pos": doc.metadata["pos"], "reason": doc.metadata["filter_reason"], "dup": None}


class StepFilter(BaseFilter):
    """A per-sample curation step (caption_quality, text_quality, ...) as a datatrove filter:
    drops what `step.scan` removes and logs it through `RemovalLog`."""

    def __init__(self, step, index: int, work_dir: str, batch_size: int = 256) -> None:
        self.name = step.name
        super().__init__(exclusion_writer=RemovalLog(work_dir, index), batch_size=batch_size)
        self.step = step

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return self.filter_batch([doc])[0]

    def filter_batch(self, batch: list[Document]) -> list[bool | tuple[bool, str]]:
        samples = [{**d.metadata["sample"], "__index__": d.metadata["doc"]} for d in batch]
        found = self.step.scan(samples)
        return [(False, found[d.metadata["doc"]][0]) if d.metadata["doc"] in found else True for d in batch]


class KeptShardWriter(PipelineStep):
    """Write stage: kept samples to `out/<source>/<shard file name>` (bytes unchanged, as the
    single-process run), and `written/{shard}.json` with the removed rows and the shard's keys."""

    type = "💽 - WRITER"
    name = "chimera kept shards"

    def __init__(self, shards: Sequence[tuple[str, str]], out: str, work_dir: str) -> None:
        super().__init__()
        self.shards, self.out, self.work_dir = list(shards), out, work_dir

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        work = folder(self.work_dir)
        done = set()
        for shard, docs in by_shard(data):
            self._write(work, shard, docs)
            done.add(shard)
        for shard in range(rank, len(self.shards), world_size):  # empty input shards still get an output
            if shard not in done:
                self._write(work, shard, [])
        return
        yield

    def _write(self, work, shard: int, docs: list[Document]) -> None:
        source, url = self.shards[shard]
        kept = [d.metadata["sample"] for d in docs if d.metadata["removed"] is None]
        target = Path(self.out) / source / Path(url).name
        with self.track_time():
            write_shard(target, kept)
        self.stat_update("kept", value=len(kept))
        removed = [{"pos": d.metadata["pos"], "key": d.id, "step": r[0], "reason": r[1], "dup": r[2],
                    "text": d.text[:200]} for d in docs if (r := d.metadata["removed"]) is not None]
        record = {"source": source, "target": str(target), "input": len(docs), "kept": len(kept),
                  "removed": removed, "keys": [d.id for d in docs]}
        with work.open(f"written/{shard:06d}.json", "wt") as f:
            json.dump(record, f)
