"""Rebuild a trained module from a checkpoint alone: the resolved model config travels inside it."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from jsonargparse import ArgumentParser

from models.safe_load import safe_load
from train.config_compat import drop_unknown_args


def build_module(model_config: dict) -> L.LightningModule:
    """Instantiate `{class_path, init_args}` through the same typed parser the CLI uses."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningModule, "model")
    cfg = parser.parse_object({"model": model_config})
    return parser.instantiate(cfg).model


def load_module(ckpt_path: str | Path, map_location: str = "cpu") -> L.LightningModule:
    path = Path(ckpt_path)
    ckpt = safe_load(path, map_location)
    config = ckpt.get("chimera_config") if isinstance(ckpt, dict) else None
    if not config:
        raise ValueError(f"{path} has no `chimera_config`: it was not written by `chimera fit`")
    config = drop_unknown_args(config)  # options removed since the checkpoint was written
    module = build_module(config)
    module.load_state_dict(ckpt["state_dict"])
    module.chimera_config = config
    return module.eval()
