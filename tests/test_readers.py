"""Shard readers: img2dataset caption pairs (jpg / jpeg / png / webp, json metadata) for CLIP and as
one-image Flamingo documents, our documents with any image format, the fail-fast error that names
what it expected and found, and skip warnings that do not flood. Shards are real tars written here."""

from __future__ import annotations

import json
import logging

import pytest

from data.image_text import image_text_pipeline
from data.interleaved import InterleavedSamples, interleaved_pipeline
from tests.shard_fixtures import colour_of, ids_of, image_bytes, mean_colour, word_tokenizer, write_tar

CAPTIONS = [("red", "JPEG", "jpg"), ("green", "WEBP", "webp"), ("blue", "PNG", "png"), ("white", "JPEG", "jpeg")]


def img2dataset_sample(i: int, colour: str, fmt: str, ext: str) -> dict:
    caption = f"a {colour} square"
    meta = {"url": f"https://example.com/{i}.{ext}", "caption": caption, "key": f"{i:09d}", "status": "success",
            "error_message": None, "width": 16, "height": 16, "original_width": 640, "original_height": 480,
            "exif": "{}", "sha256": "0" * 64}
    return {"__key__": f"{i:09d}", ext: image_bytes(colour, fmt), "txt": f" {caption}\n".encode(),
            "json": json.dumps(meta).encode()}


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer(["a", "red", "green", "blue", "white", "square", "two", "pictures", "."])


@pytest.fixture
def laion(tmp_path):
    return write_tar(tmp_path / "laion" / "00000.tar", [img2dataset_sample(i, *c) for i, c in enumerate(CAPTIONS)])


def test_img2dataset_caption_pairs_in_every_image_format(laion):
    pairs = list(image_text_pipeline([laion], mean_colour, train=False))
    assert [(colour_of(px), caption) for px, caption in pairs] == [
        ("red", "a red square"), ("green", "a green square"), ("blue", "a blue square"), ("white", "a white square")]


def test_img2dataset_pairs_are_one_image_flamingo_documents(laion, tok):
    to_sample = InterleavedSamples(tok, mean_colour, max_length=32)
    docs = list(interleaved_pipeline([laion], to_sample, train=False, source="data.sources.laion"))
    assert [d["input_ids"].tolist() for d in docs] == [
        ids_of(tok, f"<s> <image> a {c} square <|endofchunk|> </s>") for c, _, _ in CAPTIONS]
    assert docs[0]["labels"].tolist() == [-100, -100] + ids_of(tok, "a red square <|endofchunk|> </s>")
    assert [colour_of(d["pixel_values"][0]) for d in docs] == ["red", "green", "blue", "white"]


def test_our_documents_with_jpg_and_webp_images(tok, tmp_path):
    shard = write_tar(tmp_path / "docs.tar", [{
        "__key__": "doc-0", "json": json.dumps({"texts": ["a red square .", "a blue square ."],
                                                "leading": "two pictures ."}).encode(),
        "0.jpg": image_bytes("red"), "1.webp": image_bytes("blue", "WEBP")}])
    to_sample = InterleavedSamples(tok, mean_colour, max_length=None)
    (doc,) = interleaved_pipeline([shard], to_sample, train=False)
    assert doc["input_ids"].tolist() == ids_of(
        tok, "<s> two pictures . <image> a red square . <|endofchunk|> <image> a blue square . <|endofchunk|> </s>")
    assert [colour_of(p) for p in doc["pixel_values"]] == ["red", "blue"]


def test_a_format_the_readers_miss_fails_fast_naming_it(tok, tmp_path):
    to_sample = InterleavedSamples(tok, mean_colour, max_length=None)
    unknown = write_tar(tmp_path / "unknown.tar", [
        {"__key__": f"{i:05d}", "json": json.dumps({"caption": "x", "url": "u"}).encode()} for i in range(30)])
    with pytest.raises(ValueError) as err:
        list(interleaved_pipeline([unknown], to_sample, train=False, source="data.sources.mmc4", check_first=10))
    message = str(err.value)
    assert message.startswith("data.sources.mmc4: 10 samples read, none usable: expected caption pairs "
                              "key.jpg|jpeg|png|webp + key.txt")
    assert "MMC4 documents key.json with text_list" in message
    assert "found keys ['json'] with json fields ['caption', 'url'] (10x)" in message

    images_only = write_tar(tmp_path / "images-only.tar", [
        {"__key__": f"{i:05d}", "jpg": image_bytes("red")} for i in range(5)])
    with pytest.raises(ValueError) as err:  # the stream ends before check_first: still one error
        list(image_text_pipeline([images_only], mean_colour, train=False))
    assert str(err.value).startswith("data.train_shards: 5 samples read, none usable: expected caption pairs")
    assert "found keys ['jpg'] (5x); why: 5x ValueError: caption pair without .txt caption" in str(err.value)


def test_a_usable_sample_within_the_first_n_passes(tok, tmp_path):
    bad = [{"__key__": f"bad-{i:03d}", "jpg": b"not an image", "txt": b"a red square"} for i in range(9)]
    good = img2dataset_sample(99, "red", "JPEG", "jpg")
    shard = write_tar(tmp_path / "mixed.tar", bad + [good] + bad)
    pairs = list(image_text_pipeline([shard], mean_colour, train=False, check_first=10))
    assert [caption for _, caption in pairs] == ["a red square"]


def test_skip_warnings_do_not_flood(tmp_path, caplog):
    good = img2dataset_sample(0, "red", "JPEG", "jpg")
    bad = [{"__key__": f"bad-{i:04d}", "jpg": b"not an image", "txt": b"a red square"} for i in range(150)]
    shard = write_tar(tmp_path / "corrupt.tar", [good] + bad)
    with caplog.at_level(logging.WARNING, logger="data.reading"):
        pairs = list(image_text_pipeline([shard], mean_colour, train=False))
    assert len(pairs) == 1
    messages = [r.getMessage() for r in caplog.records if r.name == "data.reading"]
    assert sum("skipping unreadable sample bad-" in m for m in messages) == 10
    assert messages[10] == "data.train_shards: further skips are summarised at 100, 1000, ... skips"
    assert messages[11].startswith("data.train_shards: 100 unreadable samples skipped so far (100x UnidentifiedImageError")
    assert len(messages) == 12
