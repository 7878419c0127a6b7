"""Checkpoints are data: a file whose pickle would run code is refused by every command that
reads checkpoints, before the code runs; saves are atomic; a truncated file is named."""

import pytest
import torch
import yaml

from models.language import checkpoint_weights
from models.safe_load import CheckpointError, safe_load
from tests.cli_run import chimera, plain_error
from tests.tiny import experiment_config, tiny_world
from train.checkpoint_io import SafeCheckpointIO


class CreatesFile:
    """Unpickling this calls `open(path, "w")`: the file appearing is the proof that code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class FailsToPickle:
    def __reduce__(self):
        raise OSError("disk full")


@pytest.fixture
def hostile(tmp_path):
    """(checkpoint, the file its pickle would create); the payload is checked to work unsafely."""
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": {"model.w": torch.ones(2)}, "chimera_config": {"class_path": "x"},
                "payload": CreatesFile(marker)}, ckpt)
    torch.load(ckpt, weights_only=False)  # what a plain unpickler does
    assert marker.exists()
    marker.unlink()
    return ckpt, marker


def test_safe_load_refuses_code_before_it_runs(hostile):
    ckpt, marker = hostile
    with pytest.raises(CheckpointError, match=f"refusing to load {ckpt}: it asks to run io.open"):
        safe_load(ckpt)
    with pytest.raises(CheckpointError, match="io.open"):
        checkpoint_weights(ckpt, "model.", "init_from")  # init_from / weights_from
    assert not marker.exists()


@pytest.mark.parametrize("command", ["generate", "eval", "merge", "export"])
def test_commands_refuse_a_hostile_checkpoint(hostile, tmp_path, command):
    ckpt, marker = hostile
    data = tmp_path / "qa.jsonl"
    data.write_text('{"id": 1, "image": "a.png", "question": "q?", "answer": "a"}\n')
    args = {"generate": ["--ckpt", ckpt, "--prompt", "hi"],
            "eval": ["--ckpt", ckpt, "--tasks", "vqa", "--data", data, "--out", tmp_path / "ev"],
            "merge": ["--ckpt", ckpt, "--out", tmp_path / "m"],
            "export": ["--ckpt", ckpt, "--format", "hf-llava", "--out", tmp_path / "x"]}[command]
    error = plain_error(chimera(command, *args), command)
    assert error == f"refusing to load {ckpt}: it asks to run io.open (checkpoints are loaded as data only)"
    assert not marker.exists()


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    root = tmp_path_factory.mktemp("fit")
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(experiment_config(tiny_world(root), root)))
    return path


def test_fit_refuses_a_hostile_init_from_and_resume(hostile, config):
    ckpt, marker = hostile
    error = plain_error(chimera("fit", "--config", config, "--model.init_args.init_from", ckpt), "fit", alone=False)
    assert error.startswith(f"refusing to load {ckpt}: it asks to run io.open")
    error = plain_error(chimera("fit", "--config", config, "--ckpt_path", ckpt), "fit")
    assert error.startswith(f"refusing to load {ckpt}")
    assert not marker.exists()


def test_resume_from_a_truncated_checkpoint_names_it(tmp_path, config):
    whole = tmp_path / "whole.ckpt"
    SafeCheckpointIO().save_checkpoint({"global_step": 3, "w": torch.ones(100)}, whole)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    error = plain_error(chimera("fit", "--config", config, "--ckpt_path", cut), "fit")
    assert error.startswith(f"{cut} is not a readable checkpoint (truncated or corrupt?)")


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path):
    io, last = SafeCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 4, "w": torch.arange(3.0)}, last)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"global_step": 8, "w": torch.zeros(10_000), "bad": FailsToPickle()}, last)
    kept = io.load_checkpoint(last)
    assert kept["global_step"] == 4 and torch.equal(kept["w"], torch.arange(3.0))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind
    io.save_checkpoint({"global_step": 8, "w": torch.zeros(2)}, last)
    assert io.load_checkpoint(last)["global_step"] == 8
