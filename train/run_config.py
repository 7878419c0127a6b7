"""Saves the experiment's config into its run folder (train/run_dir.py), whatever the logger.

It saves the config as the user gave it, before the run's folder was filled into the logger,
plus the experiment's `run.name`, so `chimera fit --config <run>/config.yaml` starts the next
run of the same experiment instead of writing into this one.
A resumed attempt keeps the first attempt's file and writes its own `config.attempt<k>.yaml`.
"""

from __future__ import annotations

from lightning.pytorch.cli import SaveConfigCallback

from train.run_dir import RunFolder


class RunConfigSaver(SaveConfigCallback):
    def __init__(self, parser, config, as_given=None, **kwargs) -> None:
        super().__init__(parser, config, **{**kwargs, "save_to_log_dir": False})
        self.as_given = as_given if as_given is not None else config

    def save_config(self, trainer, pl_module, stage: str) -> None:  # rank 0 only (SaveConfigCallback.setup)
        run = next((c for c in trainer.callbacks if isinstance(c, RunFolder)), None)
        if run is None:
            return
        name = "config.yaml" if run.attempt == 0 else f"config.attempt{run.attempt}.yaml"
        run.path.mkdir(parents=True, exist_ok=True)
        self.parser.save(self.as_given, str(run.path / name), skip_none=False, overwrite=True,
                         multifile=self.multifile)
