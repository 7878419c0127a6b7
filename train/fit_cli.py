"""`chimera fit|validate`: LightningCLI, so YAML is validated against type hints before anything is built."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningCLI

from models.safe_load import safe_load
from models.sharded_checkpoint import META_FILE, is_sharded_checkpoint
from train.fit_errors import ChimeraArgumentParser

SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")


def _to_dict(value):
    if isinstance(value, Namespace):
        return {k: _to_dict(v) for k, v in vars(value).items()}
    if isinstance(value, (list, tuple)):
        return [_to_dict(v) for v in value]
    return value


class ChimeraCLI(LightningCLI):
    def parse_arguments(self, parser, args) -> None:
        """A `--ckpt_path` that is missing, truncated or not data fails here, in one line naming it,
        before anything is built (Lightning would first read it raw, then build, then load)."""
        super().parse_arguments(parser, args)
        sub = self.config.get("subcommand")
        ckpt = (self.config[sub] if sub else self.config).get("ckpt_path")
        if ckpt and str(ckpt) not in SPECIAL_CKPT_PATHS and "://" not in str(ckpt):
            # reads the pickle and the archive's index, not the tensors (of a sharded directory: its meta.pt)
            safe_load(Path(ckpt) / META_FILE if is_sharded_checkpoint(ckpt) else ckpt, mmap=True)

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        config = self.config[self.subcommand] if self.subcommand else self.config
        self.model.chimera_config = _to_dict(config["model"])


def run_lightning_cli(args: list[str] | None) -> None:
    ChimeraCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs"}},
            # checkpoints are saved atomically and read as data only (train/checkpoint_io.py)
            "plugins": [{"class_path": "train.checkpoint_io.SafeCheckpointIO"}],
        },
        parser_kwargs={"parser_mode": "yaml"},
        parser_class=ChimeraArgumentParser,  # config errors in one line (train/fit_errors.py)
    )
