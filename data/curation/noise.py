"""Known noise for the Shapes world, so every curation step can be scored against ground truth.

Why: on web data nobody knows which pairs are wrong, so a filter's precision and recall are
guesses. Shapes captions are exact, so we corrupt a clean set in known ways and label each
sample; a curation step is then a classifier whose precision/recall against the labels is
measured (`step_precision_recall`). Works on shards written by `chimera data shapes`
(`key.png`, `key.txt`, `key.json`), leaving the generator itself untouched.

Noise kinds (labels):
  mismatch          captions swapped between two images (both samples labelled)
  exact_dup         byte-identical copy of an earlier sample (also natural repeats of a scene)
  near_dup_image    copy with every pixel jittered by a few levels, re-encoded; same caption
  near_dup_caption  copy with the same image and one word of the caption replaced by a synonym
  degenerate        caption replaced by "", "image", "a a a a" or "image image image"
Copies are placed after their original, so keep-first dedup should remove the copy.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from data.curation.shards import expand, read_shard, write_shard

KINDS = ("mismatch", "exact_dup", "near_dup_image", "near_dup_caption", "degenerate")
DEGENERATE_CAPTIONS = ("", "image", "a a a a", "image image image")
SYNONYMS = {"small": "little", "large": "big", "and": "plus", "at": "in"}


def jitter_png(png: bytes, rng: np.random.Generator, amplitude: int = 3) -> bytes:
    """Add uniform noise in [-amplitude, amplitude] to every pixel and re-encode as PNG."""
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)
    img = np.clip(img + rng.integers(-amplitude, amplitude + 1, size=img.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def change_one_word(caption: str, rng: np.random.Generator) -> str:
    """Replace one word that has a synonym in SYNONYMS (meaning kept, text changed)."""
    words = caption.split(" ")
    slots = [i for i, w in enumerate(words) if w.lower() in SYNONYMS]
    if not slots:
        return caption + " indeed"
    i = slots[int(rng.integers(len(slots)))]
    words[i] = SYNONYMS[words[i].lower()]
    return " ".join(words)


def inject_noise(src: str, out: str | Path, mismatch: float = 0.1, exact_dup: float = 0.1,
                 near_dup_image: float = 0.1, near_dup_caption: float = 0.1, degenerate: float = 0.1,
                 seed: int = 0, shard_size: int = 32, prefix: str = "noisy") -> dict:
    """Write a noisy copy of the shards matching `src` under `out` plus `out/noise_labels.jsonl`
    ({"key", "label", "source"}). Rates are fractions of the clean sample count, drawn from
    disjoint sets of unique originals. Returns a summary with the label counts."""
    rng = np.random.default_rng(seed)
    originals = [s for url in expand(src) for s in read_shard(url)]
    n = len(originals)
    labels: dict[str, tuple[str, str | None]] = {}
    first_by_image: dict[bytes, str] = {}
    unique = []
    for i, s in enumerate(originals):  # natural repeats (the same scene drawn twice) are exact duplicates
        prior = first_by_image.get(s["png"] + s["txt"])
        if prior is not None:
            labels[s["__key__"]] = ("exact_dup", prior)
        else:
            first_by_image[s["png"] + s["txt"]] = s["__key__"]
            labels[s["__key__"]] = ("clean", None)
            unique.append(i)
    counts = {k: int(round(r * n)) for k, r in zip(KINDS, (mismatch, exact_dup, near_dup_image,
                                                          near_dup_caption, degenerate))}
    counts["mismatch"] -= counts["mismatch"] % 2
    if sum(counts.values()) > len(unique):
        raise ValueError(f"noise rates ask for {sum(counts.values())} distinct originals, only {len(unique)} exist")
    order = rng.permutation(unique).tolist()
    picked: dict[str, list[int]] = {}
    for kind in KINDS:
        picked[kind], order = order[:counts[kind]], order[counts[kind]:]

    items = [(float(i), dict(s)) for i, s in enumerate(originals)]
    for a, b in zip(picked["mismatch"][0::2], picked["mismatch"][1::2]):
        sa, sb = items[a][1], items[b][1]
        if sa["txt"] != sb["txt"]:
            sa["txt"], sb["txt"] = sb["txt"], sa["txt"]
            labels[sa["__key__"]] = ("mismatch", sb["__key__"])
            labels[sb["__key__"]] = ("mismatch", sa["__key__"])
    for i in picked["degenerate"]:
        s = items[i][1]
        s["txt"] = DEGENERATE_CAPTIONS[int(rng.integers(len(DEGENERATE_CAPTIONS)))].encode()
        labels[s["__key__"]] = ("degenerate", None)
    for kind in ("exact_dup", "near_dup_image", "near_dup_caption"):
        for i in picked[kind]:
            src_sample = originals[i]
            copy = {k: v for k, v in src_sample.items() if k != "__shard__"}
            copy["__key__"] = f"{src_sample['__key__']}-{kind.replace('_', '')}"
            if kind == "near_dup_image":
                copy["png"] = jitter_png(src_sample["png"], rng)
            elif kind == "near_dup_caption":
                copy["txt"] = change_one_word(src_sample["txt"].decode(), rng).encode()
            labels[copy["__key__"]] = (kind, src_sample["__key__"])
            items.append((float(rng.uniform(i + 0.5, n)), copy))
    items.sort(key=lambda x: x[0])
    samples = [{k: v for k, v in s.items() if k != "__shard__"} for _, s in items]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for j in range(0, len(samples), shard_size):
        path = out / f"{prefix}-{j // shard_size:06d}.tar"
        write_shard(path, samples[j:j + shard_size])
        shards.append(str(path))
    with (out / "noise_labels.jsonl").open("w") as f:
        for s in samples:
            label, source = labels[s["__key__"]]
            f.write(json.dumps({"key": s["__key__"], "label": label, "source": source}) + "\n")
    tally: dict[str, int] = {}
    for s in samples:
        tally[labels[s["__key__"]][0]] = tally.get(labels[s["__key__"]][0], 0) + 1
    return {"shards": shards, "labels": str(out / "noise_labels.jsonl"), "samples": len(samples), "counts": tally}


def read_labels(path: str | Path) -> dict[str, str]:
    return {r["key"]: r["label"] for r in map(json.loads, Path(path).read_text().splitlines())}


def step_precision_recall(removed: Mapping[str, str], labels: Mapping[str, str], steps: Sequence[str],
                          targets: Mapping[str, Sequence[str]]) -> dict[str, dict]:
    """Score each curation step as a noise detector.

    removed: key -> name of the step that removed it (from `removed.jsonl`).
    steps: step names in pipeline order. targets: step -> the labels it is meant to catch.
    precision = removed samples carrying a target label / removed by the step;
    recall = target samples removed by the step / target samples that reached the step
    (ones an earlier step already removed are not counted against it).
    """
    out = {}
    gone: set[str] = set()
    for step in steps:
        want = set(targets.get(step, ()))
        by_step = {k for k, s in removed.items() if s == step}
        reached = {k for k, lab in labels.items() if lab in want and k not in gone}
        tp = len(by_step & reached)
        out[step] = {"removed": len(by_step), "true_positives": tp, "targets": len(reached),
                     "precision": tp / len(by_step) if by_step else 1.0,
                     "recall": tp / len(reached) if reached else 1.0}
        gone |= by_step
    return out
