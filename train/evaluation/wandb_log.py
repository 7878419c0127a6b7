"""W&B logging for `chimera eval` and the end-of-fit evaluation: metrics plus a sample table."""

from __future__ import annotations

from pathlib import Path

from train.evaluation.inputs import data_root

TABLE_ROWS = 32
COLUMNS = ["id", "image", "prompt", "prediction", "reference", "score"]


def wandb_settings(config: dict) -> dict | None:
    """The WandbLogger init_args of an experiment config, or None when it logs elsewhere."""
    logger = (config.get("trainer") or {}).get("logger")
    for entry in logger if isinstance(logger, list) else [logger]:
        if isinstance(entry, dict) and str(entry.get("class_path", "")).endswith("WandbLogger"):
            return dict(entry.get("init_args") or {})
    return None


def flat_metrics(results: dict, prefix: str = "eval") -> dict[str, float]:
    return {f"{prefix}/{task}/{k}": v for task, metrics in results.items() if task != "meta"
            for k, v in metrics.items()}


def sample_tables(rows_by_task: dict[str, list[dict]], files: dict[str, str | Path]) -> dict:
    import wandb

    tables = {}
    for task, rows in rows_by_task.items():
        root = data_root(files[task])
        table = wandb.Table(columns=COLUMNS)
        for r in rows[:TABLE_ROWS]:
            image = root / r["image"] if r.get("image") else None
            table.add_data(r["id"], wandb.Image(str(image)) if image and image.is_file() else None,
                           r["prompt"], r["prediction"], str(r["reference"]), r["score"])
        tables[f"eval/{task}_samples"] = table
    return tables


def log_eval_to_wandb(results: dict, rows_by_task: dict[str, list[dict]], files: dict[str, str | Path],
                      settings: dict, run=None) -> None:
    """Into `run` when given (the training run), else a new run of job type `eval`."""
    import wandb

    own = run is None
    if own:
        mode = "offline" if settings.get("offline") else None
        run = wandb.init(project=settings.get("project"), dir=settings.get("save_dir"), name=settings.get("name"),
                         job_type="eval", mode=mode, config={"eval_meta": results.get("meta")})
    try:
        run.log({**flat_metrics(results), **sample_tables(rows_by_task, files)})
        run.summary.update(flat_metrics(results))
    finally:
        if own:
            run.finish()
