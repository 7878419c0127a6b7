"""Label masks cover exactly the assistant turns (answer text + EOS), token by token.

Ids are the whole rendered text's: the answer's first token carries the space after
"ASSISTANT:" (" circle"), as any other stack tokenizes it.
"""

import pytest

from data.templates import ChatTemplate
from data.tokenize import IGNORE_INDEX, Unfit, tokenize_conversation, tokenize_prompt
from data.tokenizer import train_tokenizer

TEXTS = ["What is the shape of the red object?", "circle", "square", "left", "right",
         "Is the blue object on the left or right of the image?", "How many objects are there?", "3"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tokenizer(TEXTS * 20, tmp_path_factory.mktemp("tok"), vocab_size=300)


def _targets(ids, labels):
    return [i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX]


def test_single_turn_labels_are_answer_and_eos(tok):
    conv = [{"from": "human", "value": "<image>\nWhat is the shape of the red object?"},
            {"from": "gpt", "value": "circle"}]
    ids, labels = tokenize_conversation(conv, tok, ChatTemplate())
    assert len(ids) == len(labels)
    assert ids[0] == tok.bos_token_id and labels[0] == IGNORE_INDEX
    expected = tok(" circle</s>", add_special_tokens=False)["input_ids"]
    assert _targets(ids, labels) == expected
    # the targets sit at the very end, and labels equal ids wherever they are set
    assert ids[-len(expected):] == expected
    assert all(lab in (IGNORE_INDEX, i) for i, lab in zip(ids, labels))
    assert tok.decode(ids) == "<s>USER: <image>\nWhat is the shape of the red object? ASSISTANT: circle</s>"


def test_multi_turn_labels_cover_each_answer_only(tok):
    conv = [{"from": "human", "value": "<image>\nIs the blue object on the left or right of the image?"},
            {"from": "gpt", "value": "left"},
            {"from": "human", "value": "How many objects are there?"},
            {"from": "gpt", "value": "3"}]
    ids, labels = tokenize_conversation(conv, tok, ChatTemplate())
    # walk token by token: every position is either inside an assistant answer or masked
    decoded_targets = [tok.decode([i]) for i in _targets(ids, labels)]
    assert "".join(decoded_targets) == " left</s> 3</s>"
    masked_text = tok.decode([i for i, lab in zip(ids, labels) if lab == IGNORE_INDEX])
    assert "left" not in masked_text.replace("left or right", "") and "3" not in masked_text
    # the prompt for generation is exactly the prefix before the first answer
    prompt = tokenize_prompt("Is the blue object on the left or right of the image?", tok, ChatTemplate())
    assert ids[: len(prompt)] == prompt and labels[len(prompt)] == ids[len(prompt)]
    assert all(lab == IGNORE_INDEX for lab in labels[: len(prompt)])


def test_system_prompt_is_never_a_target(tok):
    tpl = ChatTemplate(system="A chat.")
    ids, labels = tokenize_conversation([{"from": "human", "value": "hi"}, {"from": "gpt", "value": "3"}], tok, tpl)
    assert tok.decode(_targets(ids, labels)) == " 3</s>"


def test_bad_turn_order_names_the_turn(tok):
    with pytest.raises(ValueError, match="turn 1"):
        tokenize_conversation([{"from": "human", "value": "a"}, {"from": "human", "value": "b"}], tok, ChatTemplate())


def test_truncation_never_cuts_an_image(tok):
    conv = [{"from": "human", "value": "What is the shape of the red object? <image>"}, {"from": "gpt", "value": "circle"}]
    with pytest.raises(Unfit, match="<image>"):
        tokenize_conversation(conv, tok, ChatTemplate(), max_length=4)
    conv = [{"from": "human", "value": "<image> hi"}, {"from": "gpt", "value": "circle"}]
    full, full_labels = tokenize_conversation(conv, tok, ChatTemplate())
    keep = len(full) - 1  # cuts the EOS, the answer stays a target
    ids, labels = tokenize_conversation(conv, tok, ChatTemplate(), max_length=keep)
    assert ids == full[:keep] and labels == full_labels[:keep]


def test_truncation_that_leaves_no_target_is_unfit(tok):
    conv = [{"from": "human", "value": "<image>\nWhat is the shape of the red object?"}, {"from": "gpt", "value": "circle"}]
    prompt = tokenize_prompt("What is the shape of the red object?", tok, ChatTemplate())
    with pytest.raises(Unfit, match="no target"):
        tokenize_conversation(conv, tok, ChatTemplate(), max_length=len(prompt))


def test_max_length_counts_each_image_as_its_width(tok):
    conv = [{"from": "human", "value": "<image>\nWhat is the shape of the red object?"}, {"from": "gpt", "value": "circle"}]
    full, _ = tokenize_conversation(conv, tok, ChatTemplate())
    ids, _ = tokenize_conversation(conv, tok, ChatTemplate(), max_length=len(full) + 9, image_tokens=10)
    assert ids == full
    ids, _ = tokenize_conversation(conv, tok, ChatTemplate(), max_length=len(full) + 8, image_tokens=10)
    assert ids == full[:-1]
    with pytest.raises(Unfit, match="10 per image"):
        tokenize_conversation(conv, tok, ChatTemplate(), max_length=10, image_tokens=10)
