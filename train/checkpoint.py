"""Rebuild a trained module from a checkpoint alone: its architecture and tokenizer travel inside it."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from jsonargparse import ArgumentParser
from torch import nn

from models.safe_load import safe_load
from models.sharded_checkpoint import is_sharded_checkpoint
from train.architecture import architecture_config
from train.config_compat import drop_unknown_args


def self_contained(checkpoint: dict, module: nn.Module) -> dict:
    """Make `checkpoint` load with no other file present: its `chimera_config` becomes the
    architecture (`train.architecture`: no init_from/weights_from/pretrained, the LM's transformers
    config instead of a hub id or folder, the tokenizer's files as data). Every writer of a
    checkpoint (each module's `on_save_checkpoint`, merge, import) calls this, so there is one rule."""
    config = checkpoint.get("chimera_config")
    if config:
        # worked out once per module and config (a save every N steps would otherwise re-serialise
        # the tokenizer each time, on every rank); neither changes during a run
        cached = module.__dict__.get("_architecture")
        if cached is None or cached[0] is not config:
            cached = module.__dict__["_architecture"] = (config, architecture_config(config, module))
        checkpoint["chimera_config"] = cached[1]
    return checkpoint


def build_module(model_config: dict) -> L.LightningModule:
    """Instantiate `{class_path, init_args}` through the same typed parser the CLI uses."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningModule, "model")
    cfg = parser.parse_object({"model": model_config})
    return parser.instantiate(cfg).model


def load_module(ckpt_path: str | Path, map_location: str = "cpu") -> L.LightningModule:
    """A module from a `chimera fit` checkpoint file or a release directory (`chimera export
    --format chimera`), in eval mode."""
    path = Path(ckpt_path)
    if path.is_dir() and not is_sharded_checkpoint(path):
        from train.release import read_release

        config, state = read_release(path)
    else:
        ckpt = safe_load(path, map_location)
        config = ckpt.get("chimera_config") if isinstance(ckpt, dict) else None
        if not config:
            raise ValueError(f"{path} has no `chimera_config`: it was not written by `chimera fit`")
        state = ckpt["state_dict"]
    config = drop_unknown_args(config)  # options removed since the checkpoint was written
    module = build_module(config)
    module.load_state_dict(state)
    module.chimera_config = config
    return module.eval()
