"""Read a checkpoint as data: `torch.load(weights_only=True)`, never arbitrary unpickling.

A `.ckpt` from someone else must not run code when it is opened, so every checkpoint read in
Chimera (`load_module`, `init_from`, `weights_from`, Lightning's resume) goes through `safe_load`.
Lightning checkpoints of ours hold only tensors, numbers, strings and containers, which the
weights-only unpickler accepts without help; `SAFE_GLOBALS` is where a type would be added if a
checkpoint ever needed one (it is kept empty until one does).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from models.sharded_checkpoint import is_sharded_checkpoint, load_sharded_checkpoint

SAFE_GLOBALS: list = []


class CheckpointError(ValueError):
    """A checkpoint that cannot be read as data: truncated, not a torch file, or asking to run code."""


def safe_load(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """`torch.load(path, weights_only=True)`; unreadable files raise one `CheckpointError` naming them.
    `mmap=True` maps the tensors instead of reading them (a cheap check of a large file)."""
    path = Path(path)
    if is_sharded_checkpoint(path):  # FSDP's sharded `last.ckpt` directory, gathered into one dict
        return load_sharded_checkpoint(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        what = f"it asks to run {found.group(1)}" if found else "it holds objects other than tensors and plain data"
        raise CheckpointError(f"refusing to load {path}: {what} (checkpoints are loaded as data only)") from err
    except MemoryError:
        raise
    except Exception as err:  # a cut-off or foreign file fails in many ways (zip, pickle, EOF, key errors)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0]
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt?): {first}") from err


RELEASE_WEIGHTS = "model.safetensors"  # a release directory's weights (`chimera export --format chimera`)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint file (its `state_dict`) or of a release directory (its
    safetensors), so `init_from`, `weights_from` and `--ckpt` take either."""
    path = Path(path)
    if path.is_dir() and not is_sharded_checkpoint(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        weights = path / RELEASE_WEIGHTS
        if not weights.is_file():
            raise FileNotFoundError(f"{path} is a directory without {RELEASE_WEIGHTS}: not a chimera release")
        try:
            return load_file(weights)
        except SafetensorError as err:
            raise CheckpointError(f"{weights} is not a readable safetensors file (truncated or corrupt?): {err}") from err
    ckpt = safe_load(path)
    return ckpt.get("state_dict", {}) if isinstance(ckpt, dict) else {}
