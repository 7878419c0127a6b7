"""End to end, as `make demo` runs it: write Sort-of-CLEVR, train the tiny config, read its accuracy.

Slow (about 30 minutes on 2 CPU cores): deselected by default, run with `make test-slow`.
"""

import csv

import pytest

from data.sort_of_clevr import write_sort_of_clevr
from train.cli import main

CONFIG = "configs/experiments/llava_sort_of_clevr_tiny.yaml"


@pytest.mark.slow
def test_tiny_llava_learns_sort_of_clevr(tmp_path):
    data = tmp_path / "soc"
    write_sort_of_clevr(data, train_images=9800, val_images=200, seed=0, captions=True)
    main(["fit", "--config", CONFIG,
          "--data.init_args.train_json", str(data / "train.json"),
          "--data.init_args.val_qa", str(data / "val_qa.jsonl"),
          "--model.init_args.model.init_args.language.init_args.tokenizer", str(data / "tokenizer"),
          "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
          "--trainer.enable_progress_bar", "false"])
    rows = list(csv.DictReader(open(next((tmp_path / "runs").rglob("metrics.csv")))))
    final = [r for r in rows if r.get("val/acc_non_relational")][-1]
    assert float(final["val/acc_non_relational"]) >= 0.80
    for qtype in ("shape", "horizontal", "vertical", "closest", "furthest"):
        assert float(final[f"val/acc_{qtype}"]) > 0.5, qtype
    assert float(final["val/acc_count"]) > 1 / 6
