"""The world tokenizer: lossless, world words are single tokens, reloads offline unchanged."""

from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from data.shapes import World, all_questions, caption, sample_scene
from data.templates import IMAGE_TOKEN, ChatTemplate
from data.tokenizer import train_tokenizer


def world_texts(n_scenes: int = 40) -> list[str]:
    world, rng = World(), np.random.default_rng(0)
    texts = []
    for _ in range(n_scenes):
        scene = sample_scene(world, rng)
        texts.append(caption(scene))
        for qa in all_questions(scene, world):
            texts += [qa.question, qa.answer]
    return texts


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    return train_tokenizer(world_texts(), out), out


SENTENCES = [
    "A small red circle at the top left and a large blue triangle at the center.",
    f"{IMAGE_TOKEN}\nWhat color is the square at the bottom right?",
    "USER: Is there an orange circle in the image? ASSISTANT: no</s>",
    "line one\nline two\n\n  spaced  ",
    "Unseen wörds, digits 12345 and émojis 🙂 still round-trip!",
]


@pytest.mark.parametrize("text", SENTENCES)
def test_round_trip(trained, text):
    tok, _ = trained
    assert tok.decode(tok.encode(text)) == text


def test_special_tokens_fixed_ids_and_never_split(trained):
    tok, _ = trained
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == ("<pad>", "<s>", "</s>")
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.image_token_id) == (0, 1, 2, 3)
    ids = tok.encode(f"{IMAGE_TOKEN}\nDescribe the image.")
    assert ids[0] == tok.image_token_id and ids.count(tok.image_token_id) == 1
    assert tok.encode(IMAGE_TOKEN) == [3]
    assert tok.encode("x</s>")[-1] == tok.eos_token_id


def test_no_automatic_bos_eos(trained):
    tok, _ = trained
    ids = tok.encode("red")
    assert len(ids) == 1 and ids[0] not in (tok.bos_token_id, tok.eos_token_id)


@pytest.mark.parametrize("word", ["red", " red", "circle", " circle", " triangle", " orange", "yes", "no", " objects"])
def test_world_words_are_single_tokens(trained, word):
    tok, _ = trained
    ids = tok.encode(word)
    assert len(ids) == 1, tok.convert_ids_to_tokens(ids)


def test_template_strings_are_compact(trained):
    tok, _ = trained
    for s in ChatTemplate().corpus_strings():
        assert len(tok.encode(s)) <= 3, tok.convert_ids_to_tokens(tok.encode(s))


def test_reloads_with_auto_tokenizer_identically(trained):
    tok, out = trained
    loaded = AutoTokenizer.from_pretrained(out)
    for text in SENTENCES:
        assert loaded.encode(text) == tok.encode(text)
        assert loaded.decode(loaded.encode(text)) == text
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (0, 1, 2)
    assert loaded.convert_tokens_to_ids(IMAGE_TOKEN) == 3
    assert len(loaded) == len(tok) <= 512


def test_training_is_deterministic(tmp_path: Path):
    texts = world_texts(10)
    train_tokenizer(texts, tmp_path / "a")
    train_tokenizer(texts, tmp_path / "b")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_rejects_too_small_vocab(tmp_path: Path):
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["red"], tmp_path, vocab_size=100)
