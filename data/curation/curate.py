"""`chimera curate`: a configured chain of curation steps over shards, streamed shard by shard.

Why a pipeline and not scripts: each step's effect is measured (kept/removed, reasons,
examples in `curation_report.json`), every removal is logged with its reason
(`removed.jsonl`), and the same YAML reproduces the same output.

Streaming model. Steps are either *filters* (decide per sample: quality rules) or *global*
(decide after seeing everything: dedup needs all earlier samples; top-fraction CLIP
filtering needs all scores). The chain is cut into passes, each = the filters up to and
including the next global step. A pass reads the input one shard at a time, skipping
samples removed by earlier passes, and a global step keeps only compact per-sample state
(MinHash band keys/signatures, 8-byte pHashes, embeddings, scores) never samples. A final
pass writes the kept samples, shard for shard, in the input format. Memory is therefore
bounded by one shard plus the compact state.

Samples are numbered in input order across all sources; dedup keeps the first of each
cluster, so results do not depend on shard boundaries.
"""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from data.curation.c4 import C4Quality
from data.curation.clip_score import build_model, clip_scores, select_by_score
from data.curation.image_dedup import PHashDeduper, embed_images, semdedup
from data.curation.minhash import MinHashDeduper
from data.curation.mixtures import mixture_probabilities
from data.curation.shards import expand, image_bytes, read_shard, sample_image, sample_text, write_shard
from data.curation.text_quality import CaptionQuality, GopherQuality

Removals = dict[int, tuple[str, str | None]]  # sample index -> (reason, index-or-key of what it duplicates)


class Step:
    """Base: `scan(samples)` per shard returns removals (filters) or accumulates (global);
    `finish()` returns a global step's removals after the last shard."""

    is_global = False

    def __init__(self, name: str) -> None:
        self.name = name

    def scan(self, samples: list[dict]) -> Removals:
        raise NotImplementedError

    def finish(self) -> Removals:
        return {}

    def describe(self) -> dict:
        return {}


class CaptionQualityStep(Step):
    """DataComp basic caption/image rules (`CaptionQuality`); image size read from the header only."""

    def __init__(self, name: str, **kwargs) -> None:
        super().__init__(name)
        self.rule = CaptionQuality(**kwargs)

    def scan(self, samples):
        out = {}
        for s in samples:
            reason = self.rule.text_reason(sample_text(s))
            raw = image_bytes(s)
            if reason is None and raw is not None:
                try:
                    reason = self.rule.image_reason(*Image.open(io.BytesIO(raw)).size)
                except Exception:
                    reason = "corrupt_image"
            if reason is not None:
                out[s["__index__"]] = (reason, None)
        return out

    def describe(self):
        return vars(self.rule)


class DocumentRuleStep(Step):
    """A step that drops each sample its document rule names a reason for (`rule(text) -> reason | None`)."""

    rule_class: type

    def __init__(self, name: str, **kwargs) -> None:
        super().__init__(name)
        self.rule = self.rule_class.from_config(**kwargs)

    def scan(self, samples):
        out = {}
        for s in samples:
            reason = self.rule(sample_text(s))
            if reason is not None:
                out[s["__index__"]] = (reason, None)
        return out


class TextQualityStep(DocumentRuleStep):
    """Gopher quality + repetition rules (`GopherQuality`) on the document or caption text."""

    rule_class = GopherQuality

    def describe(self):
        return {k: v for k, v in vars(self.rule).items()}


class C4Step(DocumentRuleStep):
    """C4's page rules (`C4Quality`): removes the pages C4 drops (too few sentences left after
    its line rules, curly bracket, lorem ipsum, bad words). Kept documents are written unchanged:
    the chain filters, it does not rewrite text, so C4's line removal is `C4Quality.clean`'s."""

    rule_class = C4Quality

    def describe(self):
        return {k: (len(v) if k == "bad_words" and v else v) for k, v in vars(self.rule).items()
                if not k.startswith("_")}


class _GlobalStep(Step):
    is_global = True

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.indices: list[int] = []

    def _map(self, local: Mapping[int, int | None], reason: str) -> Removals:
        idx = self.indices
        return {idx[i]: (reason, None if j is None else idx[j]) for i, j in local.items()}


class MinHashStep(_GlobalStep):
    """Fuzzy dedup of the text (`MinHashDeduper`). A shard's texts are hashed `batch_size` at a
    time (the deduper's option), so the step's memory is one batch plus the band keys."""

    def __init__(self, name: str, **kwargs) -> None:
        super().__init__(name)
        self.dedup = MinHashDeduper(**kwargs)
        self.params = {"threshold": self.dedup.threshold, "num_perm": self.dedup.hasher.num_perm,
                       "bands": self.dedup.bands, "rows": self.dedup.rows, "ngram": self.dedup.hasher.ngram,
                       "char": self.dedup.hasher.char, "verify": self.dedup.verify,
                       "batch_size": self.dedup.batch_size, **self.dedup.hasher.normalisation}

    def scan(self, samples):
        self.dedup.add([sample_text(s) for s in samples])
        self.indices.extend(s["__index__"] for s in samples)
        return {}

    def finish(self):
        return self._map(self.dedup.finish(), "near_duplicate_text")

    def describe(self):
        return self.params


class PHashStep(_GlobalStep):
    """Perceptual-hash image dedup (`PHashDeduper`); samples without a readable image are removed."""

    def __init__(self, name: str, max_distance: int = 4, color_tolerance: float | None = None) -> None:
        super().__init__(name)
        self.dedup = PHashDeduper(max_distance, color_tolerance)
        self.bad: Removals = {}

    def scan(self, samples):
        images = []
        for s in samples:
            image = sample_image(s)
            if image is None:
                self.bad[s["__index__"]] = ("missing_or_corrupt_image", None)
            else:
                images.append(image)
                self.indices.append(s["__index__"])
        self.dedup.add(images)
        return {}

    def finish(self):
        return {**self.bad, **self._map(self.dedup.finish(), "near_duplicate_image")}

    def describe(self):
        return {"max_distance": self.dedup.max_distance, "color_tolerance": self.dedup.color_tolerance}


class _ModelStep(_GlobalStep):
    def __init__(self, name: str, model, batch_size: int = 64, device: str = "cpu") -> None:
        super().__init__(name)
        self.model_spec = model if isinstance(model, dict) else type(model).__name__
        self.model = build_model(model)
        if hasattr(self.model, "to"):
            self.model = self.model.to(device)
        self.batch_size, self.device = batch_size, device
        self.bad: Removals = {}

    def _images(self, samples):
        keep, images = [], []
        for s in samples:
            image = sample_image(s)
            if image is None:
                self.bad[s["__index__"]] = ("missing_or_corrupt_image", None)
            else:
                keep.append(s)
                images.append(image)
        return keep, images


class SemDedupStep(_ModelStep):
    """Embedding dedup (`semdedup`) over CLIP image embeddings, kept as float16."""

    def __init__(self, name: str, model, eps: float = 0.05, clusters: int = 8, seed: int = 0,
                 batch_size: int = 64, device: str = "cpu") -> None:
        super().__init__(name, model, batch_size, device)
        self.eps, self.clusters, self.seed = eps, clusters, seed
        self.embeddings: list[np.ndarray] = []

    def scan(self, samples):
        keep, images = self._images(samples)
        if images:
            self.embeddings.append(embed_images(self.model, images, self.batch_size, self.device).astype(np.float16))
            self.indices.extend(s["__index__"] for s in keep)
        return {}

    def finish(self):
        if not self.indices:
            return dict(self.bad)
        removed = semdedup(np.concatenate(self.embeddings), self.eps, self.clusters, self.seed)
        return {**self.bad, **self._map(removed, "semantic_duplicate")}

    def describe(self):
        return {"model": self.model_spec, "eps": self.eps, "clusters": self.clusters}


class ClipScoreStep(_ModelStep):
    """Keep pairs whose CLIP image-text cosine is >= `threshold`, or the `top_fraction` best."""

    def __init__(self, name: str, model, threshold: float | None = None, top_fraction: float | None = None,
                 batch_size: int = 64, device: str = "cpu") -> None:
        super().__init__(name, model, batch_size, device)
        select_by_score(np.zeros(1), threshold, top_fraction)  # validates the choice now, not after a pass
        self.threshold, self.top_fraction = threshold, top_fraction
        self.scores: list[np.ndarray] = []

    def scan(self, samples):
        keep, images = self._images(samples)
        if images:
            self.scores.append(clip_scores(self.model, images, [sample_text(s) for s in keep],
                                           self.batch_size, self.device))
            self.indices.extend(s["__index__"] for s in keep)
        return {}

    def finish(self):
        if not self.indices:
            return dict(self.bad)
        scores = np.concatenate(self.scores)
        keep = select_by_score(scores, self.threshold, self.top_fraction)
        self.stats = {"score_mean": float(scores.mean()), "score_min": float(scores.min()),
                      "score_max": float(scores.max()),
                      "cutoff": float(scores[keep].min()) if keep.any() else None}
        reason = "clip_score_below_threshold" if self.threshold is not None else "clip_score_not_top_fraction"
        return {**self.bad, **self._map({i: None for i in np.flatnonzero(~keep).tolist()}, reason)}

    def describe(self):
        return {"model": self.model_spec, "threshold": self.threshold, "top_fraction": self.top_fraction,
                **getattr(self, "stats", {})}


STEPS: dict[str, type[Step]] = {
    "caption_quality": CaptionQualityStep,
    "text_quality": TextQualityStep,
    "c4": C4Step,
    "minhash_dedup": MinHashStep,
    "phash_dedup": PHashStep,
    "semdedup": SemDedupStep,
    "clip_score": ClipScoreStep,
}


def build_steps(specs: Sequence[Mapping], models: Mapping[str, object] | None = None) -> list[Step]:
    """Steps from config entries `{type: ..., name?: ..., <options>}`; every entry is checked
    before any data is read. `models` maps a step name to a ready model (Python API/tests),
    overriding that step's `model` option."""
    steps: list[Step] = []
    names: Counter = Counter()
    for i, spec in enumerate(specs):
        spec = dict(spec)
        kind = spec.pop("type", None)
        if kind not in STEPS:
            raise ValueError(f"curation step {i}: unknown type {kind!r}; known: {sorted(STEPS)}")
        name = spec.pop("name", None) or kind
        names[name] += 1
        if names[name] > 1:
            name = f"{name}_{names[name]}"
        if models and name in models:
            spec["model"] = models[name]
        try:
            steps.append(STEPS[kind](name, **spec))
        except TypeError as e:
            raise ValueError(f"curation step {i} ({kind}): {e}") from None
    return steps


def parse_inputs(inputs: Sequence[str]) -> dict[str, list[str]]:
    """`[name=]pattern` entries -> name -> shard files. The default name is the shard files'
    common prefix before the last '-' (`train-000000.tar` -> `train`)."""
    sources: dict[str, list[str]] = {}
    for entry in inputs:
        name, sep, pattern = entry.partition("=")
        if not sep or "/" in name or "*" in name:
            name, pattern = "", entry
        urls = expand(pattern)
        if not name:
            stems = {Path(u).name.rsplit("-", 1)[0] if "-" in Path(u).name else Path(u).stem.split(".")[0]
                     for u in urls}
            name = stems.pop() if len(stems) == 1 else f"source{len(sources)}"
        if name in sources:
            raise ValueError(f"two inputs are both named {name!r}; use NAME=PATTERN")
        sources[name] = urls
    return sources


def load_config(config: str | Path | Mapping) -> dict:
    if isinstance(config, Mapping):
        return dict(config)
    import yaml

    cfg = yaml.safe_load(Path(config).read_text()) or {}
    unknown = set(cfg) - {"steps", "mixture", "examples", "text_field"}
    if unknown:
        raise ValueError(f"{config}: unknown top-level key(s) {sorted(unknown)}; known: steps, mixture, examples, text_field")
    return cfg


def curate(config: str | Path | Mapping, inputs: Sequence[str] | Mapping[str, Sequence[str]], out: str | Path,
           models: Mapping[str, object] | None = None,
           reader: Callable[[str], list[dict]] | None = None) -> dict:
    """Run the configured chain over `inputs` and write `out/<source>/<shard>`, `out/removed.jsonl`,
    `out/curation_report.json` and `out/mixture.json`. Returns the report.

    inputs: `[name=]pattern` strings, or name -> list of shard files.
    reader: reads one shard into a list of samples (default `read_shard`); injectable so
        tests can check that only one shard is held at a time.
    """
    cfg = load_config(config)
    steps = build_steps(cfg.get("steps") or [], models)
    n_examples = int(cfg.get("examples", 3))
    text_field = cfg.get("text_field", "text")
    reader = reader or (lambda url: read_shard(url, text_field))
    sources = dict(inputs) if isinstance(inputs, Mapping) else parse_inputs(inputs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    removed: dict[int, tuple[int, str, int | None]] = {}  # index -> (step number, reason, duplicate-of index)
    passes, group = [], []
    for i, step in enumerate(steps):
        group.append(i)
        if step.is_global:
            passes.append(group)
            group = []
    if group:
        passes.append(group)
    seen = [0] * len(steps)
    seconds = [0.0] * len(steps)
    shard_list = [(name, url) for name, urls in sources.items() for url in urls]

    def scan_shard(url: str, start: int, group: list[int]) -> int:
        samples = reader(url)
        for j, s in enumerate(samples):
            s["__index__"] = start + j
        alive = [s for s in samples if s["__index__"] not in removed]
        for i in group:
            seen[i] += len(alive)
            t = time.perf_counter()
            found = steps[i].scan(alive)
            seconds[i] += time.perf_counter() - t
            for idx, (reason, dup) in found.items():
                removed[idx] = (i, reason, dup)
            if found:
                alive = [s for s in alive if s["__index__"] not in found]
        return len(samples)

    for group in passes:
        start = 0
        for name, url in shard_list:
            start += scan_shard(url, start, group)
        if steps[group[-1]].is_global:
            i = group[-1]
            t = time.perf_counter()
            for idx, (reason, dup) in steps[i].finish().items():
                removed.setdefault(idx, (i, reason, dup))
            seconds[i] += time.perf_counter() - t

    # write pass: kept samples in the input format; removals logged with a few examples per step
    sizes: dict[str, int] = {}
    examples: list[list[dict]] = [[] for _ in steps]
    keys: dict[int, str] = {}  # keys of kept samples that a removed example points to
    wanted = {dup for (_, _, dup) in removed.values() if dup is not None}
    kept_per_source: Counter = Counter()
    written: dict[str, list[str]] = {name: [] for name in sources}
    total = 0
    with (out / "removed.jsonl").open("w") as log:
        def write_one(name: str, url: str, start: int) -> int:
            samples = reader(url)
            kept = []
            for j, s in enumerate(samples):
                idx = start + j
                if idx in wanted:
                    keys[idx] = s["__key__"]
                if idx not in removed:
                    kept.append(s)
                    continue
                i, reason, dup = removed[idx]
                row = {"key": s["__key__"], "source": name, "step": steps[i].name, "reason": reason}
                if dup is not None:
                    row["duplicate_of"] = keys.get(dup)
                log.write(json.dumps(row) + "\n")
                if len(examples[i]) < n_examples:
                    examples[i].append({**row, "text": sample_text(s)[:200]})
            target = out / name / Path(url).name
            write_shard(target, kept)
            written[name].append(str(target))
            kept_per_source[name] += len(kept)
            return len(samples)

        start = 0
        for name, url in shard_list:
            n = write_one(name, url, start)
            sizes[name] = sizes.get(name, 0) + n
            start += n
            total += n

    report_steps = []
    for i, step in enumerate(steps):
        reasons = Counter(r for (k, r, _) in removed.values() if k == i)
        n_removed = sum(reasons.values())
        report_steps.append({"name": step.name, "type": type(step).__name__, "params": _jsonable(step.describe()),
                             "input": seen[i], "kept": seen[i] - n_removed, "removed": n_removed,
                             "reasons": dict(reasons.most_common()), "examples": examples[i],
                             "seconds": round(seconds[i], 3)})
    mix = cfg.get("mixture") or {}
    kept_sizes = {name: kept_per_source[name] for name in sources}
    weights = mix.get("weights")
    probs = mixture_probabilities(kept_sizes if any(kept_sizes.values()) else None, weights,
                                  mix.get("temperature"), list(sources))
    manifest = {"sources": {name: {"shards": written[name], "samples": kept_per_source[name],
                                   "input_samples": sizes.get(name, 0)} for name in sources},
                "weights": weights, "temperature": mix.get("temperature"), "seed": int(mix.get("seed", 0)),
                "probabilities": probs}
    (out / "mixture.json").write_text(json.dumps(manifest, indent=2) + "\n")
    report = {"input": total, "kept": total - len(removed), "removed": len(removed), "steps": report_steps,
              "sources": {name: {"input": sizes.get(name, 0), "kept": kept_per_source[name]} for name in sources},
              "outputs": {"shards": written, "removed_log": str(out / "removed.jsonl"),
                          "mixture": str(out / "mixture.json")}}
    (out / "curation_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    return repr(obj)


def curate_main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="chimera curate", description="Filter, deduplicate and mix "
                                     "webdataset image-text shards or JSONL corpora (configs/curation/*.yaml).")
    parser.add_argument("--config", required=True, help="curation YAML (steps, mixture)")
    parser.add_argument("--in", dest="inputs", action="append", required=True, metavar="[NAME=]PATTERN",
                        help="input shards (glob, brace pattern or directory of .tar/.jsonl); repeat for several sources")
    parser.add_argument("--out", required=True, help="output directory")
    from data.curation.executors import add_executor_arguments, run_from_args

    add_executor_arguments(parser)
    args = parser.parse_args(argv)
    report = run_from_args(args) if args.executor else curate(args.config, args.inputs, args.out)
    if report is None:  # slurm: submitted; the report is written by the last job
        print(f"submitted; report: {Path(args.out) / 'curation_report.json'}")
        return
    for s in report["steps"]:
        print(f"{s['name']:<20} in {s['input']:>8}  kept {s['kept']:>8}  removed {s['removed']:>8}  "
              f"{', '.join(f'{k}: {v}' for k, v in list(s['reasons'].items())[:4])}")
    print(f"kept {report['kept']} of {report['input']}; report: {Path(args.out) / 'curation_report.json'}")
