"""Interleaved (MMC4-like) documents in Flamingo format: shards from the Shapes world, label
masks that skip padding, <image> and text before the first image, and Flamingo training on them."""

import csv
import json

import pytest
import torch
import webdataset as wds
import yaml
from transformers import AutoTokenizer

from data.collate import Collator
from data.image_text import expand_shards
from data.interleaved import InterleavedSamples, flamingo_text, interleaved_pipeline, tokenize_interleaved
from data.shapes import write_shapes
from train.cli import main


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    write_shapes(root, train_images=24, val_images=4, seed=0, max_objects=2)
    return root


@pytest.fixture(scope="module")
def tok(shapes):
    tok = AutoTokenizer.from_pretrained(shapes / "tokenizer")
    tok.add_special_tokens({"additional_special_tokens": ["<|endofchunk|>"]}, replace_extra_special_tokens=False)
    return tok


def test_labels_skip_leading_text_and_image_tokens(tok):
    text = flamingo_text(["A red circle.", "A blue square."], leading="Some pictures. ")
    assert text == "Some pictures. <image>A red circle.<|endofchunk|><image>A blue square.<|endofchunk|>"
    ids, labels = tokenize_interleaved(text, tok)
    image_id = tok.convert_tokens_to_ids("<image>")
    first = ids.index(image_id)
    assert all(lab == -100 for lab in labels[: first + 1])  # BOS, leading text, the first <image>
    targets = [t for t, lab in zip(ids, labels) if lab != -100]
    expected = tok("A red circle.<|endofchunk|>", add_special_tokens=False)["input_ids"] \
        + tok("A blue square.<|endofchunk|>", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert targets == expected
    with pytest.raises(ValueError, match="at least one <image>"):
        tokenize_interleaved("no images here", tok)


def test_shapes_world_writes_interleaved_documents(shapes, tok):
    urls = expand_shards(str(shapes / "shards" / "interleaved-train-*.tar"), "test")
    docs = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pil"))
    captions = {r["image"]: r["caption"] for r in
                [json.loads(line) for line in open(shapes / "val_captions.jsonl")]}
    assert captions  # the val file exists; train captions are in train.json
    train = json.load(open(shapes / "train.json"))
    assert sum(len(d["json"]["texts"]) for d in docs) == len(train)  # every train image once
    assert all(2 <= len(d["json"]["texts"]) <= 4 for d in docs[:-1])
    first = docs[0]["json"]["texts"][0]
    assert first == train[0]["conversations"][1]["value"]  # image 0 is followed by its own caption
    to_sample = InterleavedSamples(tok, lambda im: torch.zeros(3, 8, 8), max_length=None)
    samples = list(interleaved_pipeline(urls, to_sample, train=False))
    batch = Collator(tok.pad_token_id)(samples[:3])
    n_images = int((batch["input_ids"] == tok.convert_tokens_to_ids("<image>")).sum())
    assert batch["pixel_values"].shape[0] == n_images
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()  # padding is never a target


def test_flamingo_pretrains_on_interleaved_and_caption_shards(shapes, tmp_path):
    from tests.tiny import VISION

    vision = json.loads(json.dumps(VISION))
    vision["init_args"]["image_size"] = 72
    cfg = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 8, "log_every_n_steps": 1,
                    "num_sanity_val_steps": 0, "enable_progress_bar": False, "enable_model_summary": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(tmp_path), "name": "fl"}}},
        "model": {"class_path": "train.module.VLMModule", "init_args": {
            "stage": "full", "lr": 1e-2, "warmup_ratio": 0.0,
            "model": {"class_path": "models.flamingo.Flamingo", "init_args": {
                "vision": vision,
                "language": {"class_path": "models.language.LanguageModel", "init_args": {
                    "tokenizer": str(shapes / "tokenizer"),
                    "config": {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
                               "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
                               "max_position_embeddings": 512}}},
                "resampler": {"class_path": "models.resampler.PerceiverResampler",
                              "init_args": {"num_latents": 4, "depth": 1, "heads": 2, "dim_head": 16}},
                "xattn_heads": 2, "xattn_dim_head": 16}}}},
        "data": {"class_path": "data.interleaved.InterleavedDataModule", "init_args": {
            "train_shards": f"{shapes / 'shards' / 'interleaved-train-*.tar'},{shapes / 'shards' / 'train-*.tar'}",
            "batch_size": 4, "num_workers": 0}},
    }
    path = tmp_path / "fl.yaml"
    path.write_text(yaml.safe_dump(cfg))
    main(["fit", "--config", str(path)])
    rows = [r for r in csv.DictReader(open(tmp_path / "fl" / "version_0" / "metrics.csv")) if r.get("train/loss")]
    losses = [float(r["train/loss"]) for r in rows]
    assert len(losses) == 8 and sum(losses[-3:]) < sum(losses[:3])
