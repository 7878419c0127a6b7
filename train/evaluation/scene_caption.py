"""Structured scoring of Shapes-world captions ("A small red circle at the top left and ..."):
exact match and per-attribute accuracy, which say *what* a captioner gets wrong where CIDEr
gives one number. Objects are matched by position (one object per grid cell)."""

from __future__ import annotations

import re
from collections.abc import Sequence

_OBJECT = re.compile(r"\ban? (\w+) (\w+) (\w+) at the ((?:top|middle|bottom) (?:left|middle|right)|center)\b")


def parse_scene_caption(text: str) -> dict[str, tuple[str, str, str]]:
    """position -> (size, colour, shape); later mentions of a position are ignored."""
    objects: dict[str, tuple[str, str, str]] = {}
    for size, color, shape, position in _OBJECT.findall(text.lower()):
        objects.setdefault(position, (size, color, shape))
    return objects


def _norm(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def scene_caption_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float] | None:
    """None when the references are not scene captions. Otherwise: exact match (normalised), and
    over reference objects: position recall and colour/shape/size accuracy of the object the
    prediction puts at that position (a missing object counts as wrong), plus object-count accuracy."""
    refs = [parse_scene_caption(r) for r in references]
    if not any(refs):
        return None
    exact = sum(_norm(p) == _norm(r) for p, r in zip(predictions, references)) / len(references)
    hits = {"position": 0, "size": 0, "color": 0, "shape": 0}
    total = count_ok = 0
    for pred_text, ref in zip(predictions, refs):
        pred = parse_scene_caption(pred_text)
        count_ok += len(pred) == len(ref)
        for position, (size, color, shape) in ref.items():
            total += 1
            if position in pred:
                hits["position"] += 1
                psize, pcolor, pshape = pred[position]
                hits["size"] += psize == size
                hits["color"] += pcolor == color
                hits["shape"] += pshape == shape
    out = {"exact_match": exact, "object_count_accuracy": count_ok / len(references)}
    out.update({f"{k}_accuracy": v / max(1, total) for k, v in hits.items()})
    return out
