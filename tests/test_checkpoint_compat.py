"""A checkpoint written by older or newer code still loads: constructor options the code no
longer takes are dropped with a warning naming them, options it lacks take their defaults."""

import copy
import warnings

import pytest
import torch

from tests.tiny import module_config, tiny_world
from train.checkpoint import build_module, load_module
from train.config_compat import drop_unknown_args


def test_unknown_options_are_dropped_and_missing_ones_take_defaults(tmp_path):
    config = module_config(tiny_world(tmp_path))
    module = build_module(config)
    stored = copy.deepcopy(config)
    stored["init_args"]["use_flash"] = True  # a top-level option this code never had
    del stored["init_args"]["max_new_tokens"]  # written before the option existed (tiny sets 3)
    connector = stored["init_args"]["model"]["init_args"]["connector"]["init_args"]
    connector["dropout"] = 0.1
    torch.save({"state_dict": module.state_dict(), "chimera_config": stored}, tmp_path / "old.ckpt")

    with pytest.warns(UserWarning) as caught:
        loaded = load_module(tmp_path / "old.ckpt")
    messages = sorted(str(w.message) for w in caught if "no longer takes" in str(w.message))
    assert messages == [
        "checkpoint config model.init_args.model.init_args.connector: models.connectors.MLPConnector "
        "no longer takes ['dropout']; ignoring them",
        "checkpoint config model: train.module.VLMModule no longer takes ['use_flash']; ignoring them",
    ]
    assert loaded.max_new_tokens == 8 and loaded.lr == config["init_args"]["lr"]
    for key, value in module.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    assert "use_flash" not in loaded.chimera_config["init_args"]


def test_a_config_that_fits_is_unchanged_and_silent():
    config = {"class_path": "models.connectors.MLPConnector", "init_args": {"depth": 3},
              "nested": [{"class_path": "not.importable.Thing", "init_args": {"anything": 1}}]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert drop_unknown_args(config) == config
