"""`chimera fit|validate`: LightningCLI, so YAML is validated against type hints before anything is built."""

from __future__ import annotations

import lightning as L
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningCLI


def _to_dict(value):
    if isinstance(value, Namespace):
        return {k: _to_dict(v) for k, v in vars(value).items()}
    if isinstance(value, (list, tuple)):
        return [_to_dict(v) for v in value]
    return value


class ChimeraCLI(LightningCLI):
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
        },
        parser_kwargs={"parser_mode": "yaml"},
    )
