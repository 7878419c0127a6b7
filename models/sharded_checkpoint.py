"""Read a sharded checkpoint directory as data, into the one dict a checkpoint file holds.

FSDP with `state_dict_type: sharded` (train.strategies.FSDP) saves `last.ckpt` as a directory:
torch.distributed.checkpoint shards of the weights and optimizer state plus Lightning's `meta.pt`
(everything else). Resume reads it rank by rank; `init_from`, eval, export and generate need it
whole in one process. torch's own reader unpickles the index and any non-tensor entry without
restriction; here both go through the weights-only unpickler, with the index's own record types
allowed and nothing else.
"""

from __future__ import annotations

import io
import pathlib
import pickle
from pathlib import Path
from typing import Any

import torch

META_FILE = "meta.pt"  # Lightning's name for the non-tensor part
INDEX_FILE = ".metadata"  # torch.distributed.checkpoint's index of the shards


def is_sharded_checkpoint(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / META_FILE).is_file() and (path / INDEX_FILE).is_file()


class IndexUnpickler(pickle.Unpickler):
    """Unpickles a distributed-checkpoint index, refusing every global but the index's own record
    types (torch's weights-only unpickler cannot read it: the index uses pickle protocol 4+)."""

    def find_class(self, module: str, name: str):
        from torch.distributed.checkpoint import filesystem, metadata

        allowed = {(t.__module__, t.__qualname__): t for t in (
            metadata.Metadata, metadata.TensorStorageMetadata, metadata.BytesStorageMetadata,
            metadata.ChunkStorageMetadata, metadata.TensorProperties, metadata.MetadataIndex,
            metadata.StorageMeta, metadata._MEM_FORMAT_ENCODING, filesystem._StorageInfo, torch.Size,
            pathlib.PosixPath, pathlib.PurePosixPath)}  # a path is built from its parts, nothing is read
        if (module, name) in allowed:
            return allowed[(module, name)]
        if (module, name) == ("torch.serialization", "_get_layout"):  # a layout by its name: torch.strided
            return torch.serialization._get_layout
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout)):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"the checkpoint index asks for {module}.{name}, which is not index data")


def load_sharded_checkpoint(path: str | Path) -> dict[str, Any]:
    """The whole checkpoint (`state_dict`, `optimizer_states`, loops, ...) in this process's memory."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException
    from torch.distributed.checkpoint._traverse import set_element
    from torch.distributed.checkpoint.format_utils import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.metadata import StorageMeta
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    from models.safe_load import CheckpointError, safe_load

    class IndexAsData(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            with open(Path(self.path) / INDEX_FILE, "rb") as f:
                index = IndexUnpickler(f).load()
            if getattr(index, "storage_meta", None) is None:
                index.storage_meta = StorageMeta()
            index.storage_meta.load_id = self.load_id
            return index

    class EntriesAsData(_EmptyStateDictLoadPlanner):
        def load_bytes(self, read_item, value: io.BytesIO) -> None:  # DefaultLoadPlanner's, weights-only
            entry = torch.load(value, weights_only=True)
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], entry)
            else:
                self.state_dict[read_item.dest_index.fqn] = entry

    path = Path(path)
    parts: dict[str, Any] = {}
    try:
        _load_state_dict(parts, storage_reader=IndexAsData(path), planner=EntriesAsData(), no_dist=True)
    except (Exception, CheckpointException) as err:  # torch wraps each rank's failure: name the first
        failures = list(getattr(err, "failures", {}).values())
        cause = failures[0] if failures else err
        raise CheckpointError(f"{path} is not a readable sharded checkpoint: {str(cause).splitlines()[-1]}") from err
    ckpt = safe_load(path / META_FILE)
    ckpt["state_dict"] = parts.pop("model")
    ckpt["optimizer_states"] = [parts.pop(k) for k in sorted(k for k in list(parts) if k.startswith("optimizer_"))]
    return ckpt
