"""Plot a run's training loss and validation accuracy per question type from its metrics.csv.

usage: python scripts/plot_learning_curve.py runs/NAME/version_N/metrics.csv --out docs/curve.png
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(path: str) -> tuple[list[tuple[int, float]], dict[str, list[tuple[int, float]]]]:
    loss, acc = [], defaultdict(list)
    with open(path) as f:
        for row in csv.DictReader(f):
            step = int(row["step"])
            if row.get("train/loss"):
                loss.append((step, float(row["train/loss"])))
            for key, value in row.items():
                if key.startswith("val/acc_") and value:
                    acc[key[len("val/acc_"):]].append((step, float(value)))
    return loss, dict(acc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics")
    parser.add_argument("--out", required=True)
    parser.add_argument("--title", default="")
    args = parser.parse_args()
    loss, acc = read_metrics(args.metrics)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(*zip(*loss), lw=0.8)
    ax1.set(xlabel="step", ylabel="train loss (answer tokens)", yscale="log", title="training loss")
    for name, points in sorted(acc.items()):
        style = "-" if name in ("non_relational", "relational") else ":"
        ax2.plot(*zip(*points), style, marker="o", ms=3, label=name, lw=2 if style == "-" else 1)
    ax2.axhline(0.5, color="gray", lw=0.5)
    ax2.set(xlabel="step", ylabel="val accuracy", ylim=(0, 1), title="validation accuracy by question type")
    ax2.legend(fontsize=7, loc="lower right")
    fig.suptitle(args.title)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
