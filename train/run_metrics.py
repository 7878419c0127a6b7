"""One metrics curve per run across its attempts.

Lightning's CSVLogger deletes `metrics.csv` when it starts in a folder that has one, which a
resume in the same run folder does. So before each later attempt the file is kept aside as
`metrics.attempt<k>.csv`, and `read_metrics` joins the attempts per metric: an attempt's values
of a metric stand up to the step where the next attempt first logged it, where the next one's
take over (the steps between the last checkpoint and a crash were run again and count anew; a
metric logged at fit start, before Lightning restores the step, is simply replaced).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

METRICS = "metrics.csv"
BOOKKEEPING = {"step", "epoch"}  # columns every row has; the rest are metrics


def _attempt_files(run_dir: Path) -> list[Path]:
    kept = [(int(m.group(1)), p) for p in run_dir.glob("metrics.attempt*.csv")
            if (m := re.fullmatch(r"metrics\.attempt(\d+)\.csv", p.name))]
    return [p for _, p in sorted(kept)]


def keep_earlier_metrics(run_dir: Path) -> Path | None:
    """Move an earlier attempt's `metrics.csv` aside before a new attempt's logger would delete it."""
    current = Path(run_dir) / METRICS
    if not current.is_file():
        return None
    kept = current.with_name(f"metrics.attempt{len(_attempt_files(Path(run_dir)))}.csv")
    current.rename(kept)
    return kept


def read_metrics(run_dir: str | Path) -> list[dict[str, str]]:
    """The run's logged rows in step order of its attempts, as one curve (see the module docstring)."""
    run_dir = Path(run_dir)
    files = _attempt_files(run_dir) + ([run_dir / METRICS] if (run_dir / METRICS).is_file() else [])
    rows: list[dict[str, str]] = []
    for path in files:
        with open(path, newline="") as f:
            new = [{k: v for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]
        taken_over: dict[str, int] = {}
        for r in new:
            for key in r.keys() - BOOKKEEPING:
                taken_over[key] = min(taken_over.get(key, int(r["step"])), int(r["step"]))
        kept = [{k: v for k, v in r.items() if k in BOOKKEEPING or int(r["step"]) < taken_over.get(k, 1 << 62)}
                for r in rows]
        rows = [r for r in kept if r.keys() - BOOKKEEPING] + new
    return sorted(rows, key=lambda r: int(r["step"]))
