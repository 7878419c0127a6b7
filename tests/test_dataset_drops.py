"""Samples that cannot be trained on are dropped and counted, never fatal or NaN; a stray
`<image>` in a text-only record is an error naming it before training starts."""

import json

import pytest
import torch
from PIL import Image

from data.collate import Collator, Dropped
from data.conversation_dataset import ConversationDataset
from data.image_placeholders import ImagePlaceholders
from data.packing import PackingCollator
from data.templates import ChatTemplate
from data.tokenize import IGNORE_INDEX, tokenize_conversation
from data.tokenizer import train_tokenizer

LONG = " ".join(["Is the blue object on the left or right of the image?"] * 4)
IMAGE_TOKENS = 4


def conv(question, answer):
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


RECORDS = [
    {"id": "fits", "image": "a.png", "conversations": conv("<image>\nWhat is the shape of the red object?", "circle")},
    {"id": "image_past_the_end", "image": "a.png", "conversations": conv(f"{LONG} <image>", "left")},
    {"id": "first_turn_too_long", "image": "a.png", "conversations": conv(f"<image>\n{LONG}", "right")},
    {"id": "text_only", "conversations": conv("How many objects are there?", "3")},
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    texts = [LONG, "What is the shape of the red object?", "circle", "left", "right", "How many objects are there?"]
    return train_tokenizer(texts * 20, tmp_path_factory.mktemp("tok"), vocab_size=300)


def write(tmp_path, records):
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    path = tmp_path / "train.json"
    path.write_text(json.dumps(records))
    return path


def test_unfit_samples_are_dropped_and_counted(tok, tmp_path):
    fits, _ = tokenize_conversation(RECORDS[0]["conversations"], tok, ChatTemplate())
    max_length = len(fits) + IMAGE_TOKENS - 1  # the first record fits exactly, its image widened
    ds = ConversationDataset(write(tmp_path, RECORDS), tok, ChatTemplate(), lambda im: torch.zeros(3, 4, 4),
                             max_length=max_length, num_image_tokens=IMAGE_TOKENS)
    items = [ds[i] for i in range(len(ds))]
    assert items[0]["input_ids"].tolist() == fits
    assert [it.sample for it in items if isinstance(it, Dropped)] == ["image_past_the_end", "first_turn_too_long"]
    assert "cut an <image>" in items[1].reason and "no target" in items[2].reason
    placeholders = ImagePlaceholders(tok.convert_tokens_to_ids("<image>"), IMAGE_TOKENS)
    for collate in (Collator(tok.pad_token_id), Collator(tok.pad_token_id, placeholders=placeholders),
                    PackingCollator(tok.pad_token_id, placeholders, max_length)):
        batch = collate(items + [None])
        assert (batch["skipped"], batch["dropped"]) == (1, 2)
        assert batch["pixel_values"].shape[0] == 1
        assert ((batch["labels"] != IGNORE_INDEX).sum(1) > 0).all()  # every row has a target: no NaN loss
    assert batch["input_ids"].shape[1] == max_length  # widened, the image sample fills the budget exactly
    assert Collator(tok.pad_token_id)(items[1:3]) == {"skipped": 0, "dropped": 2, "unreadable": [], "samples": 2}


def test_without_num_image_tokens_an_image_counts_as_one_position(tok, tmp_path):
    fits, _ = tokenize_conversation(RECORDS[0]["conversations"], tok, ChatTemplate())
    ds = ConversationDataset(write(tmp_path, RECORDS[:1]), tok, ChatTemplate(), lambda im: torch.zeros(3, 4, 4),
                             max_length=len(fits))
    assert ds[0]["input_ids"].tolist() == fits


def test_a_literal_image_token_in_a_text_only_record_names_the_record(tok, tmp_path):
    bad = [*RECORDS, {"id": "stray", "conversations": conv("What does <image> mean in HTML?", "nothing")}]
    with pytest.raises(ValueError, match=r"stray \(1 <image>, 0 images\)"):
        ConversationDataset(write(tmp_path, bad), tok, ChatTemplate(), lambda im: torch.zeros(3, 4, 4))


def test_a_preference_pair_that_cannot_fit_is_dropped(tok, tmp_path):
    from data.preference_dataset import PreferenceCollator, PreferenceDataset

    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    pairs = [{"id": "fits", "image": "a.png", "prompt": "What is the shape of the red object?",
              "chosen": "circle", "rejected": "square"},
             {"id": "image_past_the_end", "image": "a.png", "prompt": f"{LONG} <image>",
              "chosen": "left", "rejected": "right"}]
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(p) for p in pairs))
    fits, _ = tokenize_conversation(conv("<image>\nWhat is the shape of the red object?", "square"), tok,
                                    ChatTemplate())
    ds = PreferenceDataset(tmp_path / "pairs.jsonl", tok, ChatTemplate(), lambda im: torch.zeros(3, 4, 4),
                           max_length=len(fits) + IMAGE_TOKENS - 1, num_image_tokens=IMAGE_TOKENS)
    items = [ds[0], ds[1]]
    assert isinstance(items[1], Dropped) and items[1].sample == "image_past_the_end"
    batch = PreferenceCollator(tok.pad_token_id)(items)
    assert (batch["skipped"], batch["dropped"], batch["num_pairs"]) == (0, 1, 1)
    assert batch["input_ids"].shape[0] == 2 and ((batch["labels"] != IGNORE_INDEX).sum(1) > 0).all()
