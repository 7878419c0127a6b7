"""Several `<image>` per LLaVA conversation (OneVision-style interleaved text and images): each image's
features land at its own placeholders in placeholder order (logits equal transformers' decoder run on
embeddings spliced by hand), truncation never cuts one, packing keeps them with their samples, and
generation prompts (QA and GRPO rows) take a list of images."""

from __future__ import annotations

import json

import PIL.Image
import pytest
import torch

from data.collate import Collator, Dropped
from data.conversation_dataset import ConversationDataset, QADataset
from data.packing import PackingCollator
from data.prompt_answers import PromptAnswerDataset, question_rows
from data.templates import IMAGE_TOKEN, ChatTemplate
from data.tokenize import tokenize_prompt
from data.tokenizer import train_tokenizer
from models.connectors import MLPConnector
from models.language import LanguageModel
from models.llava import LLaVA
from models.vision import HFVision
from tests.tiny import LM_CONFIG

CLIP = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "image_size": 28, "patch_size": 7, "projection_dim": 16}  # 4 x 4 patches: 16 tokens per image
QUESTION = "Image 1: <image>\nImage 2: <image>\nwhich image has the red square"


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(["image 1 image 2 which image has the red square", "the first", "the second"], out,
                    vocab_size=300)
    return str(out)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    vision = HFVision(config=dict(CLIP), model_type="clip", select_layer=-2)
    return LLaVA(vision, LanguageModel(config=dict(LM_CONFIG), tokenizer=tok), MLPConnector).eval()


def write_records(root, records: list[dict], name: str = "train.json"):
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "grey": (128, 128, 128)}
    for colour, rgb in colours.items():
        PIL.Image.new("RGB", (28, 28), rgb).save(root / f"{colour}.png")
    path = root / name
    path.write_text(json.dumps(records) if name.endswith(".json") else "\n".join(json.dumps(r) for r in records))
    return path


def two_image_record(first="red", second="blue", rid="pair"):
    return {"id": rid, "image": [f"{first}.png", f"{second}.png"], "conversations": [
        {"from": "human", "value": QUESTION}, {"from": "gpt", "value": "the first"}]}


def hand_spliced_logits(model, ids: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """transformers' decoder on one unpadded row whose k-th run of placeholders holds image k's features."""
    embeds = model.language.embed(ids[None])[0].clone()
    runs = (ids == model.language.image_token_id).nonzero().squeeze(1).split(model.num_image_tokens)
    features = model.encode_images(pixels)
    for k, run in enumerate(runs):
        assert run[-1] - run[0] + 1 == model.num_image_tokens  # each image's placeholders are contiguous
        embeds[run] = features[k]
    return model.language.model(inputs_embeds=embeds[None]).logits[0]


def test_two_images_land_at_their_own_placeholders_in_order(model, tmp_path):
    path = write_records(tmp_path, [two_image_record(), two_image_record("green", "grey", "other"),
                                    {"id": "text", "conversations": [{"from": "human", "value": "which image"},
                                                                     {"from": "gpt", "value": "the second"}]}])
    data = ConversationDataset(path, model.tokenizer, ChatTemplate(), model.image_transform(),
                               num_image_tokens=model.num_image_tokens)
    items = [data[i] for i in range(3)]
    assert items[0]["pixel_values"].shape == (2, 3, 28, 28)
    batch = Collator(model.tokenizer.pad_token_id, placeholders=model.image_placeholders)(items)
    assert (batch["input_ids"] == model.language.image_token_id).sum(1).tolist() == [32, 32, 0]
    with torch.no_grad():
        logits, loss = model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["labels"],
                             image_positions=batch["image_positions"])
        assert torch.isfinite(loss)
        for row, it in enumerate(items[:2]):
            ids = Collator(0, placeholders=model.image_placeholders)([it])["input_ids"][0]
            reference = hand_spliced_logits(model, ids, it["pixel_values"])
            torch.testing.assert_close(logits[row, : len(ids)], reference, atol=1e-5, rtol=1e-5)
            swapped = hand_spliced_logits(model, ids, it["pixel_values"].flip(0))
            assert not torch.allclose(logits[row, : len(ids)], swapped, atol=1e-3)  # order is read


def test_truncation_keeps_both_images_or_drops_the_sample(model, tmp_path):
    path = write_records(tmp_path, [two_image_record()])
    full = ConversationDataset(path, model.tokenizer, ChatTemplate(), model.image_transform(),
                               num_image_tokens=model.num_image_tokens)[0]
    ids = full["input_ids"].tolist()
    image_id = model.language.image_token_id
    last_image = len(ids) - 1 - ids[::-1].index(image_id)
    # LM positions up to and including the second image: its index + 15 more per image
    through_second = last_image + 1 + 2 * (model.num_image_tokens - 1)
    answer_start = next(i for i, lab in enumerate(full["labels"].tolist()) if lab != -100)
    kept_length = through_second + (answer_start - last_image)  # the answer's first token fits
    kept = ConversationDataset(path, model.tokenizer, ChatTemplate(), model.image_transform(),
                               max_length=kept_length, num_image_tokens=model.num_image_tokens)[0]
    assert kept["input_ids"].tolist() == ids[: answer_start + 1]
    assert kept["pixel_values"].shape[0] == 2
    cut = ConversationDataset(path, model.tokenizer, ChatTemplate(), model.image_transform(),
                              max_length=through_second - 1, num_image_tokens=model.num_image_tokens)[0]
    assert isinstance(cut, Dropped) and "would cut" in cut.reason


def test_packed_multi_image_rows_equal_padded_loss(model, tmp_path):
    records = [two_image_record(), {**two_image_record("grey", "green", "b"), "image": ["grey.png", "green.png"]},
               {"id": "one", "image": "red.png", "conversations": [
                   {"from": "human", "value": "<image>\nwhich image"}, {"from": "gpt", "value": "the first"}]}]
    path = write_records(tmp_path, records)
    data = ConversationDataset(path, model.tokenizer, ChatTemplate(), model.image_transform(),
                               num_image_tokens=model.num_image_tokens)
    items = [data[i] for i in range(3)]
    padded = Collator(model.tokenizer.pad_token_id, placeholders=model.image_placeholders)(items)
    packed = PackingCollator(model.tokenizer.pad_token_id, model.image_placeholders, max_length=512)(items)
    assert packed["input_ids"].shape[0] == 1 and packed["pixel_values"].shape[0] == 5
    with torch.no_grad():
        _, padded_loss = model(padded["input_ids"], padded["attention_mask"], padded["pixel_values"],
                               padded["labels"], image_positions=padded["image_positions"])
        _, packed_loss = model(packed["input_ids"], packed["attention_mask"], packed["pixel_values"],
                               packed["labels"], segment_ids=packed["segment_ids"],
                               image_positions=packed["image_positions"])
    # packing masks each sample's first token, which is BOS (never a target): the same targets
    torch.testing.assert_close(packed_loss, padded_loss, atol=1e-5, rtol=1e-5)


def test_qa_rows_take_a_list_of_images(model, tmp_path):
    rows = [{"id": "q", "image": ["red.png", "blue.png"], "question": "which image has the red square",
             "answer": "the first", "type": "compare"},
            {"id": "placed", "image": ["red.png", "blue.png"], "question": QUESTION, "answer": "the first"}]
    path = write_records(tmp_path, rows, "val.jsonl")
    data = QADataset(path, model.tokenizer, ChatTemplate(), model.image_transform())
    first, placed = data[0], data[1]
    image_id = model.language.image_token_id
    for item in (first, placed):
        assert item["pixel_values"].shape[0] == 2 and int((item["input_ids"] == image_id).sum()) == 2
    # no placeholder in the question: one per image before it, as a training record without any gets
    expected = tokenize_prompt(f"{IMAGE_TOKEN}\n{IMAGE_TOKEN}\n{rows[0]['question']}", model.tokenizer, ChatTemplate())
    assert first["input_ids"].tolist() == expected
    assert placed["input_ids"].tolist() == tokenize_prompt(QUESTION, model.tokenizer, ChatTemplate())
    collate = Collator(model.tokenizer.pad_token_id, left_pad=True, placeholders=model.image_placeholders)
    batch = collate([first, placed])
    out = model.generate(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], max_new_tokens=2)
    assert out.shape == (2, 2)
    assert batch["meta"][0]["image"] == ["red.png", "blue.png"]


def test_qa_rows_whose_placeholders_do_not_match_their_images_fail_at_construction(model, tmp_path):
    rows = [{"id": "bad", "image": ["red.png", "blue.png"], "question": "<image>\nwhich", "answer": "a"}]
    path = write_records(tmp_path, rows, "val.jsonl")
    with pytest.raises(ValueError, match=r"bad \(1 <image>, 2 images\)"):
        QADataset(path, model.tokenizer, ChatTemplate(), model.image_transform())


def test_grpo_prompts_take_every_image_their_question_has_seen(model, tmp_path):
    record = {"id": "r", "image": ["red.png", "blue.png", "green.png"], "conversations": [
        {"from": "human", "value": "Image 1: <image>\nImage 2: <image>\nwhich has the red square"},
        {"from": "gpt", "value": "the first"},
        {"from": "human", "value": "and now <image>"}, {"from": "gpt", "value": "the second"},
        {"from": "human", "value": "which image"}, {"from": "gpt", "value": "the first"}]}
    path = write_records(tmp_path, [record])
    rows = question_rows([record], path)
    assert [r["image"] for r in rows] == [["red.png", "blue.png"], ["red.png", "blue.png", "green.png"],
                                          ["red.png", "blue.png", "green.png"]]
    assert [r["question"] for r in rows] == ["Image 1: <image>\nImage 2: <image>\nwhich has the red square",
                                             "<image>\n<image>\nand now <image>",
                                             "<image>\n<image>\n<image>\nwhich image"]
    data = PromptAnswerDataset(path, model.tokenizer, ChatTemplate(), model.image_transform())
    image_id = model.language.image_token_id
    assert [int((data[i]["input_ids"] == image_id).sum()) for i in range(3)] == [2, 3, 3]
    green = model.image_transform()(PIL.Image.open(tmp_path / "green.png"))
    torch.testing.assert_close(data[1]["pixel_values"][2], green)


def test_single_image_grpo_prompts_are_the_ids_they_were(model, tmp_path):
    """Rows now keep a question's own `<image>`; the prompt ids equal the old stripped-then-prepended ones."""
    record = {"id": "s", "image": "red.png", "conversations": [
        {"from": "human", "value": "<image>\nwhich image"}, {"from": "gpt", "value": "the first"},
        {"from": "human", "value": "which has the red square"}, {"from": "gpt", "value": "the second"}]}
    path = write_records(tmp_path, [record])
    data = PromptAnswerDataset(path, model.tokenizer, ChatTemplate(), model.image_transform())
    for i, question in enumerate(["which image", "which has the red square"]):
        assert data[i]["input_ids"].tolist() == tokenize_prompt(question, model.tokenizer, ChatTemplate(), image=True)


def test_turn_sampling_keeps_interleaved_images_where_the_first_pair_places_them():
    import random

    from data.conversation_dataset import sample_turns

    turns = [{"from": "human", "value": QUESTION}, {"from": "gpt", "value": "the first"},
             {"from": "human", "value": "q1"}, {"from": "gpt", "value": "a1"},
             {"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"}]
    outs = {tuple(t["value"] for t in sample_turns(turns, 2, random.Random(s))) for s in range(30)}
    assert outs == {(QUESTION, "the first", "q1", "a1"), (QUESTION, "the first", "q2", "a2"),
                    ("<image>\n<image>\nq1", "a1", "q2", "a2")}  # pair 0 left out: both images move first
