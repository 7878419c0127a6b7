"""A sharded checkpoint directory is read as data: an index whose pickle would run code is refused
before anything runs (the 2-rank FSDP test in test_strategies loads a real one)."""

import os
import pickle

import pytest
import torch

from models.safe_load import CheckpointError, safe_load
from models.sharded_checkpoint import INDEX_FILE, META_FILE, is_sharded_checkpoint


class Hostile:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_an_index_that_runs_code_is_refused(tmp_path):
    folder, marker = tmp_path / "last.ckpt", tmp_path / "ran"
    folder.mkdir()
    torch.save({"global_step": 3}, folder / META_FILE)
    (folder / INDEX_FILE).write_bytes(pickle.dumps(Hostile(str(marker)), protocol=4))
    assert is_sharded_checkpoint(folder) and not is_sharded_checkpoint(folder / META_FILE)
    with pytest.raises(CheckpointError, match=r"not a readable sharded checkpoint: .*asks for posix\.system"):
        safe_load(folder)
    assert not marker.exists()
