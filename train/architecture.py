"""A trained module's architecture as data: its resolved config with every upstream reference gone.

A training config says where things start: `init_from` / `weights_from` checkpoints, `pretrained`
towers, a hub id or folder for the LM, a tokenizer folder. None of that is needed once training
has produced a `state_dict`, and all of it is missing on another machine. `architecture_config`
rewrites the config so that building it gives the same architecture with random init and no file
read: the starting-weight arguments (`STARTING_WEIGHTS`) go back to their defaults, and each
component whose shape or tokenizer came from a file (`LanguageModel`, `HFVision`,
`OpenCLIPVision`) replaces those arguments with what its `architecture()` method reports from the
live module (the transformers config, the tokenizer's files, the normalisation).
"""

from __future__ import annotations

import copy
import importlib
import inspect
from collections.abc import Iterator
from typing import Any

from torch import nn

# arguments that only say where the weights start from; the state_dict carries the trained ones
STARTING_WEIGHTS = ("init_from", "weights_from", "pretrained", "checkpoint_path")


def architecture_config(config: dict, module: nn.Module) -> dict:
    """A copy of `config` (`{class_path, init_args}`, any depth) that rebuilds `module`'s architecture
    with no upstream file: load its state_dict into the result to get the trained module back."""
    config = copy.deepcopy(config)
    for cls, args, where in _components(config, "model"):
        params = _parameters(cls)
        for name in STARTING_WEIGHTS:
            if name in args:
                default = params[name].default if name in params else None
                args[name] = None if default is inspect.Parameter.empty else default
        describe = getattr(cls, "architecture", None)
        if callable(describe):
            args.update(_the_instance(module, cls, where).architecture())
    return config


def component_args(config: dict, cls: type) -> list[dict]:
    """The `init_args` (in place, not copies) of every component in `config` that is a `cls`."""
    return [args for found, args, _ in _components(config, "model") if issubclass(found, cls)]


def _components(node: Any, where: str) -> Iterator[tuple[type, dict, str]]:
    """(class, init_args, config path) of every `{class_path, init_args}` whose class imports."""
    if isinstance(node, list):
        for i, value in enumerate(node):
            yield from _components(value, f"{where}[{i}]")
        return
    if not isinstance(node, dict):
        return
    cls = _import(node.get("class_path"))
    if cls is not None and isinstance(node.get("init_args"), dict):
        yield cls, node["init_args"], where
    for key, value in node.items():
        yield from _components(value, where if key == "init_args" else f"{where}.{key}")


def _import(class_path: Any) -> type | None:
    if not isinstance(class_path, str) or "." not in class_path:
        return None
    module, _, name = class_path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None
    return found if isinstance(found, type) else None


def _parameters(cls: type) -> dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(cls).parameters)
    except (TypeError, ValueError):
        return {}


def _the_instance(module: nn.Module, cls: type, where: str) -> Any:
    """The one submodule of exactly this class: the live part the config node describes."""
    found = [m for m in module.modules() if type(m) is cls]
    if len(found) != 1:
        raise ValueError(f"{where}: the module holds {len(found)} {cls.__name__} parts, so the config "
                         f"cannot be matched to one of them")
    return found[0]
