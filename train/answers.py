"""Per-type accuracy tables for validation during training (answers are scored by the VQA metric)."""

from __future__ import annotations

from collections import defaultdict


def accuracy_by_type(records: list[dict], groups: dict[str, list[str]] | None = None) -> dict[str, float]:
    """records: {"type", "correct"} -> {"acc": overall, "acc_<type>": ..., "acc_<group>": ...}."""
    by_type: dict[str, list[bool]] = defaultdict(list)
    for r in records:
        by_type[r.get("type") or "all"].append(bool(r["correct"]))
    out = {"acc": sum(sum(v) for v in by_type.values()) / max(1, sum(len(v) for v in by_type.values()))}
    for t, v in sorted(by_type.items()):
        out[f"acc_{t}"] = sum(v) / len(v)
    for g, types in (groups or {}).items():
        hits = [x for t in types for x in by_type.get(t, [])]
        if hits:
            out[f"acc_{g}"] = sum(hits) / len(hits)
    return out


def format_accuracy(accuracy: dict[str, float], step: int, n: int, groups: list[str]) -> str:
    """Console table: overall, then the groups, then each type."""
    keys = ["acc"] + [f"acc_{g}" for g in groups if f"acc_{g}" in accuracy]
    keys += [k for k in accuracy if k not in keys]
    lines = [f"validation at step {step}: {n} questions", f"{'type':<16} {'accuracy':>8}"]
    lines += [f"{('all' if k == 'acc' else k[4:]):<16} {accuracy[k]:>8.3f}" for k in keys]
    return "\n".join(lines)
