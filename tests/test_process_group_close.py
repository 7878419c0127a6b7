"""A run that ends closes its process group: nothing it built keeps the group (and gloo's worker
threads) alive into interpreter shutdown, where a worker freeing a finished collective's tensors
would abort a run that succeeded."""

from __future__ import annotations

import os
import weakref

import lightning as L
import pytest
import torch
import yaml

from tests.tiny import experiment_config, tiny_world
from train.cli import main


class GroupWatch(L.Callback):
    """Remembers the process group the run trained under, without holding it."""

    seen: list = []

    def on_train_start(self, trainer, pl_module) -> None:
        GroupWatch.seen.append(weakref.ref(torch.distributed.group.WORLD))


@pytest.mark.skipif(torch.distributed.is_initialized(), reason="needs a process with no group")
def test_fit_under_fsdp_releases_the_process_group(tmp_path, monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(29400 + os.getpid() % 1000))
    cfg = experiment_config(tiny_world(tmp_path), tmp_path / "runs", max_steps=2)
    cfg["trainer"].update({"strategy": {"class_path": "train.strategies.FSDP"}, "devices": 1, "limit_val_batches": 0, "enable_checkpointing": False,
                           "callbacks": [{"class_path": "tests.test_process_group_close.GroupWatch"}]})
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    import tests.test_process_group_close as config_module  # the module the config names (pytest may import this file under another name)

    seen = config_module.GroupWatch.seen
    seen.clear()
    environ = dict(os.environ)

    main(["fit", "--config", str(path)])

    assert len(seen) == 1
    assert not torch.distributed.is_initialized()
    # the group itself was freed (its destructor joins the workers), not only unregistered: the FSDP
    # units that hold it did not outlive the run
    assert seen[0]() is None
    # and the rank variables Lightning set (LOCAL_RANK would tell a later `chimera fit` launched from
    # this process that its ranks are started externally) are gone with the run
    assert dict(os.environ) == environ
