"""Last stage of a distributed `chimera curate`: one task that turns the write stage's per-shard
records into the single-process run's `removed.jsonl`, `curation_report.json` and `mixture.json`.

The report has the same fields and values as `data.curation.curate.curate`'s, except `seconds`
(per-step time lives in each stage's datatrove `stats.json` under the work folder's `logs/`)
and an added `executor` entry. It mirrors curate()'s assembly; keep the two in step.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from data.curation.curate import _jsonable
from data.curation.mixtures import mixture_probabilities
from data.curation.stage_io import SHARD_SHIFT, folder

POS_MASK = (1 << SHARD_SHIFT) - 1


class CurationReport(PipelineStep):
    """steps: (name, type name, params) per step, in chain order; executor: what ran it."""

    type = "📊 - REPORT"
    name = "chimera curation report"

    def __init__(self, shards: Sequence[tuple[str, str]], sources: Sequence[str], steps: Sequence[tuple[str, str, dict]],
                 out: str, work_dir: str, mixture: Mapping | None, examples: int, executor: Mapping) -> None:
        super().__init__()
        self.shards, self.sources, self.steps = list(shards), list(sources), list(steps)
        self.out, self.work_dir, self.mixture = out, work_dir, dict(mixture or {})
        self.examples, self.executor = examples, dict(executor)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        work, out = folder(self.work_dir), Path(self.out)

        def record(shard: int) -> dict:
            with work.open(f"written/{shard:06d}.json", "rt") as f:
                return json.load(f)

        # duplicates point at an earlier document: a first pass collects which keys are needed, so
        # memory holds those keys only, never every document's
        wanted: dict[int, set[int]] = {}  # shard -> doc ids some duplicate points at
        for shard in range(len(self.shards)):
            for r in record(shard)["removed"]:
                if r["dup"] is not None:
                    wanted.setdefault(r["dup"] >> SHARD_SHIFT, set()).add(r["dup"])
        keys: dict[int, str] = {}
        removed_at = [Counter() for _ in self.steps]  # reasons per step
        examples: list[list[dict]] = [[] for _ in self.steps]
        sizes, kept, written = Counter(), Counter(), {name: [] for name in self.sources}
        with (out / "removed.jsonl").open("w") as log:
            for shard in range(len(self.shards)):
                rec = record(shard)
                keys.update((d, rec["keys"][d & POS_MASK]) for d in wanted.pop(shard, ()))
                name = rec["source"]
                sizes[name] += rec["input"]
                kept[name] += rec["kept"]
                written[name].append(rec["target"])
                for r in rec["removed"]:
                    i = r["step"]
                    row = {"key": r["key"], "source": name, "step": self.steps[i][0], "reason": r["reason"]}
                    if r["dup"] is not None:
                        row["duplicate_of"] = keys[r["dup"]]
                    log.write(json.dumps(row) + "\n")
                    removed_at[i][r["reason"]] += 1
                    if len(examples[i]) < self.examples:
                        examples[i].append({**row, "text": r["text"]})
        total = sum(sizes.values())
        report_steps, alive = [], total
        for i, (name, kind, params) in enumerate(self.steps):
            stats_path = f"global/step{i:02d}.json"
            if work.exists(stats_path):
                with work.open(stats_path, "rt") as f:
                    params = {**params, **json.load(f)}
            n_removed = sum(removed_at[i].values())
            report_steps.append({"name": name, "type": kind, "params": _jsonable(params), "input": alive,
                                 "kept": alive - n_removed, "removed": n_removed,
                                 "reasons": dict(removed_at[i].most_common()), "examples": examples[i],
                                 "seconds": None})
            alive -= n_removed
        mix = self.mixture
        kept_sizes = {name: kept[name] for name in self.sources}
        weights = mix.get("weights")
        probs = mixture_probabilities(kept_sizes if any(kept_sizes.values()) else None, weights,
                                      mix.get("temperature"), self.sources)
        manifest = {"sources": {name: {"shards": written[name], "samples": kept[name], "input_samples": sizes[name]}
                                for name in self.sources},
                    "weights": weights, "temperature": mix.get("temperature"), "seed": int(mix.get("seed", 0)),
                    "probabilities": probs}
        (out / "mixture.json").write_text(json.dumps(manifest, indent=2) + "\n")
        n_removed = total - sum(kept.values())
        report = {"input": total, "kept": total - n_removed, "removed": n_removed, "steps": report_steps,
                  "sources": {name: {"input": sizes[name], "kept": kept[name]} for name in self.sources},
                  "outputs": {"shards": written, "removed_log": str(out / "removed.jsonl"),
                              "mixture": str(out / "mixture.json")},
                  "executor": self.executor}
        (out / "curation_report.json").write_text(json.dumps(report, indent=2) + "\n")
        return
        yield
