"""The data-centric result, end to end: run configs/pipelines/curation.yaml (finished stages are
skipped), then print and write `<out>/bench_curation.md`:

1. each curation step as a noise detector: precision / recall against the injected labels;
2. the CLIP-score step's scores by label (clean vs mismatched pairs) and the precision /
   recall other thresholds or DataComp-style top fractions would have given, from the same scores;
3. one row per trained variant: samples trained on, steps, train minutes, CIDEr-D, caption
   exact match, per-object attribute accuracy on the clean val captions.

    python scripts/bench_curation.py [--pipeline configs/pipelines/curation.yaml]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.curation.noise import read_labels, step_precision_recall  # noqa: E402
from train.pipeline import Pipeline, _substitute  # noqa: E402
from train.report import markdown_table, text_table  # noqa: E402

DUPS = ("exact_dup", "near_dup_image", "near_dup_caption")
TARGETS = {"caption_quality": ["degenerate"], "text_quality": ["degenerate"], "minhash_dedup": DUPS,
           "phash_dedup": DUPS, "semdedup": DUPS, "clip_score": ["mismatch"]}


def _stage(pipe: Pipeline, kind: str) -> dict:
    found = [s for s in pipe.spec["stages"] if kind in s]
    if len(found) != 1:
        raise ValueError(f"the pipeline needs exactly one `{kind}` stage, found {len(found)}")
    return found[0]


def step_table(pipe: Pipeline, noise: dict, curated: dict) -> tuple[list[str], list[list[str]]]:
    cdir = pipe.stage_dir(curated["name"])
    report = json.loads((cdir / "curation_report.json").read_text())
    removed = {r["key"]: r["step"] for r in map(json.loads, (cdir / "removed.jsonl").read_text().splitlines())}
    labels = read_labels(pipe.stage_dir(noise["name"]) / "noise_labels.jsonl")
    names = [s["name"] for s in report["steps"]]
    pr = step_precision_recall(removed, labels, names, {n: TARGETS.get(n, ()) for n in names})
    rows = [[s["name"], ", ".join(TARGETS.get(s["name"], ())), str(s["input"]), str(s["removed"]),
             f"{pr[s['name']]['precision']:.3f}", f"{pr[s['name']]['recall']:.3f}", f"{s['seconds']:.1f}"]
            for s in report["steps"]]
    header = ["step", "targets", "input", "removed", "precision", "recall", "seconds"]
    return header, rows


def clip_score_sweep(pipe: Pipeline, noise: dict, curated: dict) -> list[str]:
    """Re-score the pairs that reached the clip_score step (same model, same images) and tabulate."""
    from data.curation.clip_score import build_model, clip_scores, select_by_score
    from data.curation.curate import load_config, parse_inputs
    from data.curation.shards import read_shard, sample_image, sample_text

    spec = curated["curate"]
    steps = load_config(spec["config"]).get("steps") or []
    if not any(s.get("type") == "clip_score" for s in steps):
        return []
    step = next(s for s in steps if s.get("type") == "clip_score")
    name = step.get("name", "clip_score")
    model = build_model((spec.get("models") or {}).get(name, step.get("model")))
    cdir = pipe.stage_dir(curated["name"])
    removed = {r["key"]: r["step"] for r in map(json.loads, (cdir / "removed.jsonl").read_text().splitlines())}
    names = [s["name"] for s in json.loads((cdir / "curation_report.json").read_text())["steps"]]
    earlier = set(names[:names.index(name)])
    labels = read_labels(pipe.stage_dir(noise["name"]) / "noise_labels.jsonl")
    keys, images, texts = [], [], []
    for urls in parse_inputs(spec["in"]).values():
        for url in urls:
            for s in read_shard(url):
                if removed.get(s["__key__"]) not in earlier and (im := sample_image(s)) is not None:
                    keys.append(s["__key__"])
                    images.append(im)
                    texts.append(sample_text(s))
    scores = clip_scores(model, images, texts)
    bad = np.array([labels[k] == "mismatch" for k in keys])
    q = [0.01, 0.05, 0.25, 0.5, 0.75, 0.95]
    lines = [f"CLIP scores of the {len(keys)} pairs reaching `{name}` ({int(bad.sum())} mismatched):", "",
             markdown_table(["pairs", "n", *[f"q{int(x * 100):02d}" for x in q]],
                            [[lab, str(int(m.sum())), *[f"{v:.3f}" for v in np.quantile(scores[m], q)]]
                             for lab, m in (("mismatched", bad), ("all others", ~bad)) if m.any()]), ""]
    rows = []
    thresholds = sorted({0.3, 0.5, 0.7, 0.8, 0.9} | ({step["threshold"]} if step.get("threshold") else set()))
    cutoffs = [(f"threshold {t}" + (" (configured)" if t == step.get("threshold") else ""),
                select_by_score(scores, threshold=t)) for t in thresholds]
    cutoffs += [(f"keep top {f:.0%}", select_by_score(scores, top_fraction=f)) for f in (0.3, 0.6, 0.7, 0.8)]
    for label, keep in cutoffs:
        drop = ~keep
        tp = int((drop & bad).sum())
        rows.append([label, str(int(drop.sum())), f"{tp / max(1, drop.sum()):.3f}", f"{tp / max(1, bad.sum()):.3f}"])
    lines += ["Precision / recall of the step at other cut-offs (same scores):", "",
              markdown_table(["cut-off", "removed", "precision", "recall"], rows), ""]
    return lines


def variant_table(pipe: Pipeline) -> tuple[list[str], list[list[str]]]:
    report = _stage(pipe, "report")["report"]
    header = ["variant", "samples", "steps", "train min", "CIDEr-D", "caption exact", "position acc",
              "size acc", "colour acc", "shape acc", "object count acc"]
    rows = []
    for v in report["variants"]:
        fit_dir = pipe.stage_dir(v["fit"])
        cfg = yaml.safe_load((fit_dir / "stage.yaml").read_text())
        train_json = Path(cfg["data"]["init_args"]["train_json"])
        seconds = _seconds(pipe, v["fit"])
        cap = json.loads((pipe.stage_dir(v["eval"]) / "results.json").read_text())["caption"]
        rows.append([v["name"], str(len(json.loads(train_json.read_text()))), str(cfg["trainer"]["max_steps"]),
                     f"{seconds / 60:.1f}", f"{cap['cider_d']:.3f}", f"{cap['exact_match']:.3f}",
                     *[f"{cap[f'{k}_accuracy']:.3f}" for k in ("position", "size", "color", "shape", "object_count")]])
    return header, rows


def _seconds(pipe: Pipeline, stage: str) -> float:
    return json.loads((pipe.stage_dir(stage) / "complete.json").read_text())["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", default="configs/pipelines/curation.yaml")
    parser.add_argument("--no-sweep", action="store_true", help="skip re-scoring the pairs for the cut-off table")
    args = parser.parse_args()
    pipe = Pipeline(args.pipeline)
    start = time.perf_counter()
    pipe.run()
    wall = time.perf_counter() - start
    noise, curated = _stage(pipe, "noise"), _substitute(_stage(pipe, "curate"), pipe.dirs)
    lines = [f"# Curation benchmark ({args.pipeline})", "",
             f"Pipeline run: {wall / 60:.1f} min wall clock this invocation (finished stages are skipped);",
             "stage times: " + ", ".join(f"{s['name']} {_seconds(pipe, s['name']) / 60:.1f}"
                                         for s in pipe.spec["stages"]) + " min.", "",
             "Curation steps against the injected noise labels:", "", markdown_table(*step_table(pipe, noise, curated)),
             ""]
    if not args.no_sweep:
        lines += clip_score_sweep(pipe, noise, curated)
    header, rows = variant_table(pipe)
    lines += ["Tiny LLaVA captioner, clean val captions:", "", markdown_table(header, rows), ""]
    out = pipe.out / "bench_curation.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:-2]))
    print(text_table(header, rows))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
