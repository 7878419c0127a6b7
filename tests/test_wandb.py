"""W&B is selectable in config and works offline: a run directory with a table of sample predictions."""

import json

import yaml

from tests.tiny import experiment_config, tiny_world
from train.cli import main


def test_wandb_offline_run_logs_metrics_and_prediction_table(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    world = tiny_world(tmp_path)
    logger = {"class_path": "lightning.pytorch.loggers.WandbLogger",
              "init_args": {"project": "chimera-test", "save_dir": str(tmp_path), "offline": True}}
    cfg = experiment_config(world, tmp_path, max_steps=2, logger=logger)
    path = tmp_path / "wandb.yaml"
    path.write_text(yaml.safe_dump(cfg))
    main(["fit", "--config", str(path)])
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    tables = list(runs[0].rglob("samples_*.table.json"))
    assert tables, list(runs[0].rglob("*"))
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["id", "image", "question", "answer", "prediction", "correct"]
    val = [json.loads(line) for line in open(world / "val_qa.jsonl")]
    assert len(table["data"]) == min(16, len(val))  # num_logged_samples defaults to 16
    assert [row[0] for row in table["data"]] == [r["id"] for r in val[:16]]
    assert all(row[1] is not None for row in table["data"])  # each row carries its image
    assert (runs[0] / "files" / "config.yaml").exists() or list(runs[0].rglob("*.wandb"))
