"""Few-shot prompting: RICES picks the most similar support images (most similar last), random
selection is seeded, and k-shot evaluation of a Flamingo runs with k+1 images per prompt."""

import json

import pytest
import torch

from tests.test_flamingo_stage import flamingo_config
from tests.tiny import tiny_world
from train.checkpoint import build_module
from train.evaluation.decoding import Decoding
from train.evaluation.fewshot import fewshot_turns, select_demonstrations
from train.evaluation.runner import evaluate_model


def test_rices_orders_most_similar_last_and_excludes_the_query():
    support = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8]]), dim=-1)
    queries = torch.nn.functional.normalize(torch.tensor([[1.0, 0.1], [0.0, 1.0]]), dim=-1)
    picks = select_demonstrations(2, 4, 2, "rices", queries, support)
    assert picks == [[1, 0], [3, 2]]  # query 0: closest is support 0, then 1 -> [1, 0]
    # leave-one-out over the evaluated set: a query never demonstrates itself
    picks = select_demonstrations(4, 4, 3, "rices", support, support, exclude=[{0}, {1}, {2}, {3}])
    assert all(q not in p and len(set(p)) == 3 for q, p in enumerate(picks))
    assert picks[0][-1] == 1  # support 1 is the nearest other image to support 0


def test_random_demonstrations_are_seeded_and_distinct():
    a = select_demonstrations(5, 10, 4, "random", exclude=[{q} for q in range(5)], seed=3)
    assert a == select_demonstrations(5, 10, 4, "random", exclude=[{q} for q in range(5)], seed=3)
    assert a != select_demonstrations(5, 10, 4, "random", exclude=[{q} for q in range(5)], seed=4)
    assert all(len(set(p)) == 4 and q not in p for q, p in enumerate(a))
    with pytest.raises(ValueError, match="cannot take"):
        select_demonstrations(1, 3, 3, "random", exclude=[{0}])


def test_fewshot_turns():
    turns = fewshot_turns([("Q1?", "a1"), ("Q2?", "a2")], "Q?")
    assert [t["from"] for t in turns] == ["human", "gpt", "human", "gpt", "human"]
    assert turns[0]["value"] == "<image>\nQ1?" and turns[-1]["value"] == "<image>\nQ?"


def test_kshot_flamingo_eval_is_batch_invariant(tmp_path):
    world = tiny_world(tmp_path)
    cfg = flamingo_config(world, tmp_path)
    module = build_module(cfg["model"]).eval()
    for block in module.model.cross_attention:  # open the gates so images matter
        block.attn_gate.data.fill_(1.0)
        block.ff_gate.data.fill_(1.0)
    files = {"vqa": world / "val_qa.jsonl"}
    runs = {}
    for bs in (1, 4):
        decoding = Decoding(batch_size=bs, shots=2, demos="rices", stop=[], max_new_tokens=3)
        runs[bs] = evaluate_model(module, files, tmp_path / f"k{bs}", decoding)
    rows1, rows4 = runs[1][1]["vqa"], runs[4][1]["vqa"]
    assert [r["prediction"] for r in rows1] == [r["prediction"] for r in rows4]
    image_of = {r["id"]: r["image"] for r in map(json.loads, open(world / "val_qa.jsonl"))}
    for row in rows1:  # demonstrations never show the query's own image
        assert len(row["demos"]) == 2 and all(image_of[d] != row["image"] for d in row["demos"])
