"""Conversation data: turn sampling keeps pairs and the image, unreadable images become skips."""

import random

import pytest
import torch

from data.collate import Collator, Unreadable
from data.conversation_dataset import read_records, sample_turns

CONV = [{"from": "human", "value": "<image>\nq0"}, {"from": "gpt", "value": "a0"},
        {"from": "human", "value": "q1"}, {"from": "gpt", "value": "a1"},
        {"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"}]


def test_sample_turns_keeps_question_answer_pairs_and_puts_the_image_first():
    rng = random.Random(0)
    seen = set()
    for _ in range(50):
        out = sample_turns(CONV, 2, rng)
        assert len(out) == 4 and out[0]["value"].startswith("<image>\n")
        assert sum(t["value"].count("<image>") for t in out) == 1
        qs = [t["value"].replace("<image>\n", "") for t in out[::2]]
        assert [t["value"] for t in out[1::2]] == [q.replace("q", "a") for q in qs]
        assert qs == sorted(qs)  # original order kept
        seen.add(tuple(qs))
    assert len(seen) == 3  # all subsets of size 2 appear
    assert sample_turns(CONV, 5, rng) is CONV


def test_collator_drops_none_items_and_counts_them():
    item = {"input_ids": torch.tensor([1, 2, 3]), "labels": torch.tensor([-100, 2, 3]), "pixel_values": torch.zeros(1, 3, 4, 4)}
    short = {"input_ids": torch.tensor([1, 2]), "labels": torch.tensor([-100, 2]), "pixel_values": None}
    batch = Collator(pad_token_id=0)([item, None, short, None])
    assert batch["skipped"] == 2
    assert batch["input_ids"].tolist() == [[1, 2, 3], [1, 2, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [-100, 2, -100]]
    assert batch["pixel_values"].shape == (1, 3, 4, 4)
    left = Collator(pad_token_id=0, left_pad=True)([short, item])
    assert left["input_ids"].tolist() == [[0, 1, 2], [1, 2, 3]]
    assert Collator(0)([None, None]) == {"skipped": 2, "dropped": 0, "unreadable": [], "samples": 2}
    missing = Unreadable("s7", "images/7.png")
    counted = Collator(0)([missing, item])
    assert (counted["skipped"], counted["unreadable"], counted["samples"]) == (1, ["images/7.png"], 2)
    assert counted["input_ids"].tolist() == [[1, 2, 3]]


def test_read_records_names_file_and_line(tmp_path):
    bad = tmp_path / "qa.jsonl"
    bad.write_text('{"id": 1}\n{broken\n')
    with pytest.raises(ValueError, match=r"qa.jsonl:2"):
        read_records(bad)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        read_records(tmp_path / "missing.json")
    obj = tmp_path / "obj.json"
    obj.write_text('{"id": 1}')
    with pytest.raises(ValueError, match="expected a JSON list"):
        read_records(obj)
