"""Logger-specific extras kept out of the training step: the W&B table of sample predictions."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.loggers import Logger, WandbLogger


def log_sample_table(loggers: list[Logger], records: list[dict], datamodule, step: int) -> None:
    """W&B: a table of image, question, answer, prediction, correct. Other loggers: nothing extra."""
    wandb_loggers = [lg for lg in loggers if isinstance(lg, WandbLogger)]
    if not wandb_loggers or not records:
        return
    import wandb

    root = Path(getattr(datamodule, "val_qa", "") or ".").parent
    columns = ["id", "image", "question", "answer", "prediction", "correct"]
    rows = []
    for r in records:
        image = root / r["image"] if r.get("image") else None
        rows.append([r["id"], wandb.Image(str(image)) if image and image.is_file() else None,
                     r["question"], r["answer"], r["prediction"], r["correct"]])
    for lg in wandb_loggers:
        lg.log_table(key="val/samples", columns=columns, data=rows, step=step)
