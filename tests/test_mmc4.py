"""MMC4 documents placed as OpenFlamingo places them: a one-to-one assignment over the similarity
matrix, the similarity threshold, image and token limits; token ids and label masks hand-written
for a document with a known similarity matrix, read from a real MMC4-format tar shard."""

from __future__ import annotations

import base64
import itertools
import json

import numpy as np
import pytest

from data.assignment import max_score_pairs
from data.collate import Collator, Dropped
from data.interleaved import InterleavedSamples, interleaved_pipeline
from data.mmc4 import Mmc4Rules
from data.multisource import Source
from data.reading import Rejected
from tests.shard_fixtures import colour_of, ids_of, image_bytes, mean_colour, word_tokenizer, write_tar

SENTENCES = ["intro words.", "a red circle.", "more text.", "a blue square.", "the end."]
# image 0 (red) scores best at sentence 3, image 1 (blue) best at 3 too; the assignment must give
# image 0 -> 3 (0.30) and image 1 -> 1 (0.25): 0.55 beats 0.20 + 0.28. Image 2 has no bytes.
SIMILARITY = [[0.10, 0.20, 0.10, 0.30, 0.10],
              [0.10, 0.25, 0.10, 0.28, 0.10],
              [0.90, 0.90, 0.90, 0.90, 0.90]]
LOOSE = dict(min_image_bytes=0, single_image_keep=1.0)  # the fixture's images are tiny


def mmc4_json(similarity=SIMILARITY) -> bytes:
    info = [{"image_name": "red.jpg", "matched_text_index": 3, "matched_sim": 0.30,
             "image_base64": base64.b64encode(image_bytes("red")).decode()},
            {"image_name": "blue.png", "matched_text_index": 1, "matched_sim": 0.25,
             "image_base64": base64.b64encode(image_bytes("blue", "PNG")).decode()},
            {"image_name": "gone.jpg", "matched_text_index": 0, "matched_sim": 0.90}]
    return json.dumps({"text_list": SENTENCES, "image_info": info, "similarity_matrix": similarity,
                       "url": "https://example.com/page", "could_have_url_duplicate": 0}).encode()


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer(["intro", "words", ".", "a", "red", "circle", "more", "text", "blue", "square", "the", "end"])


def read(tok, max_length=None, **rules):
    to_sample = InterleavedSamples(tok, mean_colour, max_length, Mmc4Rules(**{**LOOSE, **rules}))
    return to_sample({"__key__": "doc", "json": mmc4_json()})


def test_assignment_is_the_best_one_to_one_matching():
    rng = np.random.default_rng(0)
    for _ in range(100):
        n, m = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        score = rng.random((n, m))
        pairs = max_score_pairs(score)
        rows, cols = zip(*pairs)
        assert len(pairs) == min(n, m) and len(set(rows)) == len(set(cols)) == len(pairs)
        if n <= m:
            best = max(sum(score[i, p[i]] for i in range(n)) for p in itertools.permutations(range(m), n))
        else:
            best = max(sum(score[p[j], j] for j in range(m)) for p in itertools.permutations(range(n), m))
        assert sum(score[r, c] for r, c in pairs) == pytest.approx(best)
    assert max_score_pairs(np.array(SIMILARITY)[:2]) == [(0, 3), (1, 1)]


def test_images_before_their_matched_sentences_chunks_end_at_the_next_image(tok):
    sample = read(tok)
    expected = ("<s> intro words . <image> a red circle . more text . <|endofchunk|> "
                "<image> a blue square . the end . <|endofchunk|> </s>")
    assert sample["input_ids"].tolist() == ids_of(tok, expected)
    # loss on text only: BOS, leading text, the first <image> and every <image> are masked
    labels = sample["labels"].tolist()
    assert [i for i, lab in enumerate(labels) if lab == -100] == [0, 1, 2, 3, 4, 13]
    # images in the order of their <image> tokens: blue (sentence 1) first, then red (sentence 3)
    assert [colour_of(p) for p in sample["pixel_values"]] == ["blue", "red"]


def test_threshold_max_images_and_truncation(tok):
    # 0.26: the blue image's pair (0.25) is left out; the red one keeps sentence 3
    one = read(tok, sim_threshold=0.26)
    assert one["input_ids"].tolist() == ids_of(
        tok, "<s> intro words . a red circle . more text . <image> a blue square . the end . <|endofchunk|> </s>")
    assert [colour_of(p) for p in one["pixel_values"]] == ["red"]
    # max_images 1 keeps the image first in the text
    first = read(tok, max_images=1)
    assert first["input_ids"].tolist() == ids_of(
        tok, "<s> intro words . <image> a red circle . more text . a blue square . the end . <|endofchunk|> </s>")
    assert [colour_of(p) for p in first["pixel_values"]] == ["blue"]
    # cut at 14 tokens ends on the second <image>: it is dropped with its picture
    cut = read(tok, max_length=14)
    assert cut["input_ids"].tolist() == ids_of(tok, "<s> intro words . <image> a red circle . more text . <|endofchunk|>")
    assert [colour_of(p) for p in cut["pixel_values"]] == ["blue"]
    with pytest.raises(Rejected, match="1 image"):
        read(tok, max_length=14, min_images=2)
    with pytest.raises(Rejected, match="no <image>"):
        read(tok, max_length=4)


def test_rules_that_drop_a_document(tok):
    with pytest.raises(Rejected, match="similarity >= 0.5"):
        read(tok, sim_threshold=0.5)
    with pytest.raises(Rejected, match="no readable image_base64 of >= 11000 bytes"):
        read(tok, min_image_bytes=11_000)  # OpenFlamingo's size floor; the fixture's images are smaller
    with pytest.raises(Rejected, match="single_image_keep"):
        read(tok, sim_threshold=0.26, single_image_keep=0.0)
    rules = Mmc4Rules(single_image_keep=0.5)
    kept = []
    for k in range(400):
        try:
            rules.check_count(1, f"doc-{k:05d}")
            kept.append(k)
        except Rejected:
            pass
    assert 0.4 < len(kept) / 400 < 0.6
    assert all(rules.check_count(1, f"doc-{k:05d}") is None for k in kept)  # the same documents every time
    with pytest.raises(ValueError, match="min_images <= max_images"):
        Mmc4Rules(min_images=3, max_images=2)


def test_mmc4_shard_through_the_pipeline_counts_dropped_documents(tok, tmp_path):
    shard = write_tar(tmp_path / "mmc4-00000.tar", [
        {"__key__": "doc-0", "json": mmc4_json()},
        {"__key__": "doc-1", "json": mmc4_json(similarity=[[0.0] * 5] * 3)},  # nothing over the threshold
        {"__key__": "doc-2", "json": mmc4_json()}])
    to_sample = InterleavedSamples(tok, mean_colour, 256, Mmc4Rules(**LOOSE))
    items = list(interleaved_pipeline([shard], to_sample, train=False, source="data.sources.mmc4"))
    assert isinstance(items[1], Dropped) and "similarity" in items[1].reason
    batch = Collator(tok.pad_token_id)(items)
    assert batch["dropped"] == 1 and batch["skipped"] == 0
    assert batch["input_ids"].shape == (2, 23) and batch["pixel_values"].shape == (4, 3, 1, 1)


def test_source_takes_mmc4_rules_from_config():
    src = Source(shards="x.tar", mmc4={"sim_threshold": 0.3, "max_images": 4})
    assert src.mmc4 == Mmc4Rules(sim_threshold=0.3, max_images=4)
    assert Source(shards="x.tar").mmc4 == Mmc4Rules()  # OpenFlamingo's: 0.24, 1..6 images


def test_unreadable_image_is_left_out_and_the_rest_reassigned(tok):
    info = json.loads(mmc4_json())
    info["image_info"][0]["image_base64"] = base64.b64encode(b"not an image").decode()
    to_sample = InterleavedSamples(tok, mean_colour, None, Mmc4Rules(**LOOSE))
    sample = to_sample({"__key__": "doc", "json": json.dumps(info).encode()})
    # alone, the blue image takes its best sentence (3, 0.28) instead of the shared optimum's 1
    assert sample["input_ids"].tolist() == ids_of(
        tok, "<s> intro words . a red circle . more text . <image> a blue square . the end . <|endofchunk|> </s>")
    assert [colour_of(p) for p in sample["pixel_values"]] == ["blue"]
