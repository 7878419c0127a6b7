"""Flamingo trains through the same module, stages and CLI as LLaVA."""

import csv
import json

import pytest
import torch
import yaml

from tests.tiny import experiment_config, tiny_world
from train.checkpoint import build_module, load_module
from train.cli import main

RESAMPLER = {"class_path": "models.resampler.PerceiverResampler",
             "init_args": {"num_latents": 4, "depth": 1, "heads": 2, "dim_head": 16}}


def flamingo_config(world, run_root, stage="full", max_steps=4):
    cfg = experiment_config(world, run_root, max_steps=max_steps)
    model = cfg["model"]["init_args"]["model"]
    model["class_path"] = "models.flamingo.Flamingo"
    model["init_args"].pop("connector")
    model["init_args"].update({"resampler": RESAMPLER, "cross_attn_every_n_layers": 1, "xattn_heads": 2,
                               "xattn_dim_head": 16})
    cfg["model"]["init_args"]["stage"] = stage
    cfg["trainer"]["logger"]["init_args"]["name"] = "flamingo"
    return cfg


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory.mktemp("world"))


def test_align_stage_trains_resampler_cross_attention_and_token_rows_only(world, tmp_path):
    module = build_module(flamingo_config(world, tmp_path, stage="align")["model"])
    table = {name: (total, trainable) for name, total, trainable in module.parameter_table()}
    assert set(table) == {"vision", "connector", "cross_attention", "special_tokens", "language"}
    for name in ("connector", "cross_attention", "special_tokens"):
        assert table[name][1] == table[name][0] > 0
    assert table["vision"][1] == 0 and table["language"][1] == 0
    # gates start closed: the untrained Flamingo is exactly its language model
    blocks = module.model.cross_attention
    assert all(float(b.attn_gate) == 0.0 and float(b.ff_gate) == 0.0 for b in blocks)


def test_flamingo_fit_validates_and_reloads(world, tmp_path):
    cfg = flamingo_config(world, tmp_path, max_steps=6)
    cfg["model"]["init_args"]["lr"] = 1e-2
    path = tmp_path / "f.yaml"
    path.write_text(yaml.safe_dump(cfg))
    main(["fit", "--config", str(path)])
    run = tmp_path / "flamingo" / "version_0"
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert losses[-1] < losses[0]
    assert any(r.get("val/acc_non_relational") for r in rows)
    module = load_module(next((run / "checkpoints").glob("*.ckpt")))
    gates = torch.stack([b.attn_gate.detach().flatten()[0] for b in module.model.cross_attention])
    assert (gates != 0).all()  # the gates opened during training
    rec = json.loads(open(world / "val_qa.jsonl").readline())
    preds = [json.loads(line) for line in open(next((run / "predictions").glob("*.jsonl")))]
    from train.generate import generate_answer

    answer = generate_answer(str(next((run / "checkpoints").glob("*.ckpt"))), rec["question"],
                             str(world / rec["image"]), max_new_tokens=3)
    assert answer == preds[0]["prediction"]
