"""How `chimera fit` writes and reads its checkpoints (installed by default in train/fit_cli.py).

Writes go to a temporary file in the same folder, are flushed to disk and renamed over the
target (`os.replace` is atomic within one filesystem), so a run killed mid-save keeps the
previous `last.ckpt` whole. Reads (`--ckpt_path` resume) use `safe_load`: data only, and a
truncated file is one error naming it instead of a zip-reader traceback.
"""

from __future__ import annotations

from collections.abc import Callable

import os
import uuid
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from models.safe_load import safe_load


class SafeCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_save(checkpoint, path)

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        if "://" in str(path):
            return super().load_checkpoint(path, map_location, weights_only=True)
        return safe_load(path, map_location)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` to a temporary sibling of `path`, fsync, then rename over `path`; on failure
    `path` is untouched and the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_save(obj: Any, path: str | Path) -> None:
    """`torch.save` through `atomic_write` (a kill mid-save leaves the previous file whole)."""

    def write(tmp: Path) -> None:
        with open(tmp, "xb") as f:  # plain open: the umask sets its mode, as for torch.save
            torch.save(obj, f)

    atomic_write(path, write)
