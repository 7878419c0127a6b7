"""`chimera fit|validate`: LightningCLI, so YAML is validated against type hints before anything is built."""

from __future__ import annotations

import contextvars
import copy
import gc
import importlib
import inspect
import os
from pathlib import Path

import lightning as L
import torch
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningCLI
from torch import nn

from models.safe_load import safe_load
from models.sharded_checkpoint import META_FILE, is_sharded_checkpoint
from train.fit_errors import ChimeraArgumentParser
from train.run_config import RunConfigSaver
from train.run_dir import ENV, RunFolder, RunSettings, decide, open_attempt, point_latest, process_rank
from train.run_metrics import keep_earlier_metrics
from train.strategies import FSDP

SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")


def _to_dict(value):
    if isinstance(value, Namespace):
        return {k: _to_dict(v) for k, v in vars(value).items()}
    if isinstance(value, (list, tuple)):
        return [_to_dict(v) for v in value]
    return value


def _logger_entries(trainer) -> list[Namespace]:
    value = trainer.get("logger")
    return [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, Namespace)]


FOLDER_LOGGERS = ("CSVLogger", "TensorBoardLogger")  # loggers whose folder is save_dir/name/version


def builds_on_meta(trainer: Namespace) -> bool:
    """This process is a rank other than 0 of an FSDP run that takes rank 0's weights
    (`train.strategies.FSDP(init_on_rank0=True)`): it builds its model on the meta device."""
    strategy = trainer.get("strategy")
    if process_rank() == 0 or not isinstance(strategy, Namespace):
        return False
    module, _, name = str(strategy.class_path).rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, FSDP)):
        return False
    default = inspect.signature(FSDP).parameters["init_on_rank0"].default
    return bool((strategy.get("init_args") or Namespace()).get("init_on_rank0", default))


class BuildOnMeta:
    """jsonargparse instantiator: a model component built inside `torch.device("meta")`
    (`models.meta_init`): its shapes, no storage, no weight file read."""

    def __call__(self, class_type, *args, **kwargs):
        with torch.device("meta"):
            return class_type(*args, **kwargs)


class ChimeraCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_class_arguments(RunSettings, "run", help="where this run writes (train/run_dir.py)")

    def before_instantiate_classes(self) -> None:
        """Decide the run's folder (train/run_dir.py) and point folder-keeping loggers into it."""
        sub = self.subcommand
        config = self.config[sub] if sub else self.config
        loggers = _logger_entries(config.trainer)
        args = [lg.get("init_args") or Namespace() for lg in loggers]
        logger_dir = next((a.get("save_dir") for a in args if a.get("save_dir")), None)
        logger_name = next((a.get("name") for lg, a in zip(loggers, args)
                            if str(lg.class_path).endswith(FOLDER_LOGGERS) and a.get("name")
                            and a.get("name") != "lightning_logs"), None)
        files = config.get("config") or []
        resume_from = config.get("ckpt_path") if sub == "fit" else None
        run = config.get("run") or Namespace()
        settings = RunSettings(root=run.get("root"), name=run.get("name"), dir=run.get("dir"))
        path = decide(settings, logger_dir, logger_name, Path(str(files[0])).stem if files else None,
                      resume_from)
        as_given = copy.deepcopy(config)
        if not settings.dir:  # a rerun from the saved config is the same experiment (new version)
            as_given.run.name = settings.name or path.parent.name
        self.save_config_kwargs = {**self.save_config_kwargs, "as_given": as_given}
        self.run_attempt = 0
        if process_rank() == 0:
            self.run_attempt = open_attempt(path, sub or "fit", resume_from)
            if self.run_attempt > 0:
                keep_earlier_metrics(path)
            if sub == "fit" and not settings.dir:
                point_latest(path)
            os.environ[ENV] = str(path)  # the ranks Lightning launches inherit the folder
        self.run_path = path
        if builds_on_meta(config.trainer):  # after Lightning's instantiator for the LightningModule itself
            self.parser.add_instantiator(BuildOnMeta(), nn.Module, subclasses=True)
        for lg, a in zip(loggers, args):
            if str(lg.class_path).endswith(FOLDER_LOGGERS):
                a.save_dir, a.name, a.version = str(path.parent.parent), path.parent.name, path.name
                lg.init_args = a

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
        self.trainer.callbacks.append(RunFolder(self.run_path, self.run_attempt))
        for callback in self.trainer.checkpoint_callbacks:  # Lightning's default one included
            if callback.dirpath is None:
                callback.dirpath = str(self.run_path / "checkpoints")


def run_lightning_cli(args: list[str] | None) -> None:
    environ = dict(os.environ)
    try:
        # jsonargparse leaves context variables set (a parser whose instantiators hold the CLI, hence the
        # trainer and the model); in a context of its own, the run's objects die with it
        contextvars.copy_context().run(_cli, args)
        close_process_group()
    finally:
        # Lightning writes rank variables (LOCAL_RANK, NODE_RANK, ...) into this process's environment, and
        # the run folder is this run's (ENV); a later command in the same process (a pipeline stage) that
        # launches `chimera fit` would inherit them, and LOCAL_RANK there means "ranks are started
        # externally": its rank 0 would wait forever for ranks nobody starts
        os.environ.clear()
        os.environ.update(environ)


def close_process_group() -> None:
    """Close the process group once nothing holds it, so its worker threads are joined now.

    A gloo worker frees each finished collective's tensors itself, and that can need the GIL. Left
    alive until the interpreter exits (the FSDP modules, the trainer and the strategy hold the group
    in reference cycles), a worker that wants the GIL while Python finalises aborts a run that
    succeeded ("terminate called without an active exception"). Collected first, the group's last
    reference goes with `destroy_process_group`, whose destructor waits for the workers."""
    if not torch.distributed.is_initialized():
        return
    gc.collect()
    torch.distributed.destroy_process_group()


def _cli(args: list[str] | None) -> None:
    ChimeraCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        save_config_callback=RunConfigSaver,  # config.yaml into the run folder (train/run_config.py)
        trainer_defaults={
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs"}},
            # checkpoints are saved atomically and read as data only (train/checkpoint_io.py)
            "plugins": [{"class_path": "train.checkpoint_io.SafeCheckpointIO"}],
        },
        parser_kwargs={"parser_mode": "yaml"},
        parser_class=ChimeraArgumentParser,  # config errors in one line (train/fit_errors.py)
    )
