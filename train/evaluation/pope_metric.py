"""POPE (Li et al. 2023) object-hallucination metrics with a forgiving yes/no parser.

"yes" is the positive class. An answer that is neither yes nor no counts as a wrong answer
(never as "yes") and is reported separately, so a model that rambles is visible, not hidden.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable

_NEGATIONS = {"not", "none", "isn't", "aren't", "nothing", "false", "incorrect"}
_AFFIRMATIONS = {"true", "correct"}
_WORD = re.compile(r"[a-z']+")
_UNSURE = re.compile(r"\b(not sure|unsure|don't know|do not know|cannot tell|can't tell|unclear)\b")
_THERE_IS = re.compile(r"\bthere (is|are)\b")


def parse_yes_no(text: str) -> str | None:
    """"Yes." / "yes, there is" -> "yes"; "No, there is not" / "There is no dog" -> "no";
    anything else -> None. The first yes/no word decides; negations decide when no yes/no word."""
    text = text.lower()
    words = _WORD.findall(text)
    for w in words:
        if w in ("yes", "yeah", "yep"):
            return "yes"
        if w in ("no", "nope"):
            return "no"
    if _UNSURE.search(text):
        return None
    if any(w in _NEGATIONS for w in words):
        return "no"
    if any(w in _AFFIRMATIONS for w in words) or _THERE_IS.search(text):  # "There is a red circle."
        return "yes"
    return None


def binary_metrics(pairs: Iterable[tuple[str | None, str]]) -> dict[str, float]:
    """(parsed prediction or None, gold "yes"/"no") -> accuracy, precision, recall, F1, yes-ratio."""
    tp = fp = tn = fn = unparsed = n = 0
    for pred, gold in pairs:
        n += 1
        unparsed += pred is None
        if gold == "yes":
            tp += pred == "yes"
            fn += pred != "yes"
        else:
            fp += pred == "yes"
            tn += pred == "no"  # an unparsed answer to a "no" probe is wrong, but not a false "yes"
    if n == 0:
        raise ValueError("no POPE records to score")
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / n, "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": (tp + fp) / n, "unparsed": float(unparsed), "n": float(n)}


def pope_metrics(records: Iterable[dict]) -> dict[str, dict[str, float]]:
    """records: {"prediction", "answer", "split"} -> metrics per split and over all splits."""
    by_split: dict[str, list[tuple[str | None, str]]] = defaultdict(list)
    for r in records:
        gold = parse_yes_no(str(r["answer"]))
        if gold is None:
            raise ValueError(f"POPE reference answer {r['answer']!r} (id {r.get('id')}) is not yes/no")
        pair = (parse_yes_no(r["prediction"]), gold)
        by_split[r.get("split") or "all"].append(pair)
        if r.get("split"):
            by_split["all"].append(pair)
    return {split: binary_metrics(pairs) for split, pairs in sorted(by_split.items())}
