"""Fit a checkpoint's stored `chimera_config` to the classes as they are now.

A checkpoint outlives the code that wrote it: an option removed since then must not make it
unloadable, and one added since then takes its default (jsonargparse fills those). Only
configs read from checkpoints go through here; a user's YAML with an unknown key stays an
error, since there it is usually a typo.
"""

from __future__ import annotations

import importlib
import inspect
import warnings
from typing import Any


def drop_unknown_args(config: Any, where: str = "model") -> Any:
    """A copy of `config` in which every `{class_path, init_args}` (at any depth) keeps only the
    arguments its class still takes; each dropped set is named in a warning."""
    if isinstance(config, list):
        return [drop_unknown_args(v, f"{where}[{i}]") for i, v in enumerate(config)]
    if not isinstance(config, dict):
        return config
    out = {k: drop_unknown_args(v, f"{where}.{k}") for k, v in config.items()}
    if isinstance(out.get("class_path"), str) and isinstance(out.get("init_args"), dict):
        known = _parameters(out["class_path"])
        dropped = sorted(set(out["init_args"]) - known) if known is not None else []
        if dropped:
            warnings.warn(f"checkpoint config {where}: {out['class_path']} no longer takes {dropped}; "
                          "ignoring them", stacklevel=2)
            out["init_args"] = {k: v for k, v in out["init_args"].items() if k in known}
    return out


def _parameters(class_path: str) -> set[str] | None:
    """The keyword arguments `class_path` takes; None when unknown (not importable, or it takes
    **kwargs), and then the config is left for jsonargparse to judge."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        params = inspect.signature(cls).parameters.values()
    except (ImportError, AttributeError, ValueError, TypeError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
