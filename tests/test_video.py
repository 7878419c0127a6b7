"""Video as a list of frames (LLaVA-OneVision style): per-frame pooling against hand-computed grids
and transformers' `apply_pooling`, a clip's LM width on the host (dataset, truncation, collation,
packing), logits equal to the decoder run on hand-pooled frame features spliced at the clip's
placeholders, and a clip record with an image-free turn training and validating through Lightning."""

from __future__ import annotations

import csv
import json

import lightning as L
import PIL.Image
import PIL.ImageDraw
import pytest
import torch

from data.collate import Collator, Dropped, Unreadable
from data.conversation_dataset import ConversationDataset, QADataset
from data.packing import PackingCollator
from data.templates import ChatTemplate
from data.tokenizer import train_tokenizer
from models.connectors import MLPConnector
from models.language import LanguageModel
from models.llava import LLaVA
from models.video_pool import pool_frames, pooled_side
from models.vision import HFVision
from tests.tiny import LM_CONFIG
from train.data_module import ConversationDataModule
from train.module import VLMModule

QUESTION = "<image>\nWhich way does the red circle move?"


def clip_config(image_size: int) -> dict:
    """A tiny CLIP tower of (image_size / 7)^2 patches."""
    return {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "image_size": image_size, "patch_size": 7, "projection_dim": 16}


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(["which way does the red circle move", "left", "right", "what colour is the circle", "red"],
                    out, vocab_size=300)
    return str(out)


def llava(tok, image_size: int = 28, **kwargs) -> LLaVA:
    torch.manual_seed(0)
    vision = HFVision(config=clip_config(image_size), model_type="clip", select_layer=-2)
    return LLaVA(vision, LanguageModel(config=dict(LM_CONFIG), tokenizer=tok), MLPConnector, **kwargs).eval()


@pytest.fixture(scope="module")
def model(tok):
    return llava(tok)  # 4 x 4 patches: 16 tokens per image, 2 x 2 = 4 per pooled frame


def write_frames(root, name: str, xs: list[int]) -> list[str]:
    """A red circle at each x in turn (one frame each), on grey."""
    paths = []
    for k, x in enumerate(xs):
        im = PIL.Image.new("RGB", (28, 28), (128, 128, 128))
        PIL.ImageDraw.Draw(im).ellipse((x - 5, 9, x + 5, 19), fill=(220, 30, 30))
        paths.append(f"{name}/{k}.png")
        (root / name).mkdir(exist_ok=True)
        im.save(root / paths[-1])
    return paths


def clip_record(root, rid="left", xs=(20, 14, 8), answer="left", extra_turn=False) -> dict:
    turns = [{"from": "human", "value": QUESTION}, {"from": "gpt", "value": answer}]
    if extra_turn:  # a turn that names no image
        turns += [{"from": "human", "value": "What colour is the circle?"}, {"from": "gpt", "value": "red"}]
    return {"id": rid, "video": write_frames(root, rid, list(xs)), "conversations": turns}


def image_record(root) -> dict:
    PIL.Image.new("RGB", (28, 28), (30, 30, 220)).save(root / "still.png")
    return {"id": "still", "image": "still.png", "conversations": [
        {"from": "human", "value": "<image>\nwhat colour is the circle"}, {"from": "gpt", "value": "red"}]}


def dataset(model, root, records, **kwargs) -> ConversationDataset:
    (root / "train.json").write_text(json.dumps(records))
    return ConversationDataset(root / "train.json", model.tokenizer, ChatTemplate(), model.image_transform(),
                               num_image_tokens=model.num_image_tokens, clip_transform=model.clip_transform(),
                               **kwargs)


# ---------------------------------------------------------------- pooling by hand


def test_pooling_an_even_grid_averages_each_2x2_block():
    grid = torch.arange(16.0).view(1, 16, 1)  # row-major 4 x 4: value 4r + c
    expected = torch.tensor([(0 + 1 + 4 + 5) / 4, (2 + 3 + 6 + 7) / 4, (8 + 9 + 12 + 13) / 4, (10 + 11 + 14 + 15) / 4])
    for mode in ("bilinear", "average"):  # halving bilinearly samples between each pair: the block mean
        torch.testing.assert_close(pool_frames(grid, 2, mode).flatten(), expected)
    assert pool_frames(grid, 1, "bilinear") is grid


def test_pooling_an_odd_grid_bilinearly_rounds_up_and_averaging_drops_the_ragged_edge():
    grid = torch.tensor([[1.0, 2.0, 4.0], [8.0, 16.0, 32.0], [64.0, 128.0, 256.0]]).view(1, 9, 1)
    # 3 -> ceil(3/2) = 2 per side; output i samples input (i + 0.5) * 1.5 - 0.5 = 0.25, 1.75:
    # weights 0.75/0.25 of rows (cols) 0, 1 and 0.25/0.75 of rows (cols) 1, 2
    top_left = .75 * (.75 * 1 + .25 * 2) + .25 * (.75 * 8 + .25 * 16)
    top_right = .75 * (.25 * 2 + .75 * 4) + .25 * (.25 * 16 + .75 * 32)
    bottom_left = .25 * (.75 * 8 + .25 * 16) + .75 * (.75 * 64 + .25 * 128)
    bottom_right = .25 * (.25 * 16 + .75 * 32) + .75 * (.25 * 128 + .75 * 256)
    assert (top_left, top_right, bottom_left, bottom_right) == (3.4375, 9.625, 62.5, 175.0)
    torch.testing.assert_close(pool_frames(grid, 2, "bilinear").flatten(),
                               torch.tensor([top_left, top_right, bottom_left, bottom_right]))
    # avg_pool2d keeps floor(3/2) = 1: the top-left block
    torch.testing.assert_close(pool_frames(grid, 2, "average").flatten(), torch.tensor([(1 + 2 + 8 + 16) / 4]))
    assert [pooled_side(s, 2, "bilinear") for s in (3, 4, 5, 24, 27)] == [2, 2, 3, 12, 14]
    assert [pooled_side(s, 2, "average") for s in (3, 4, 5, 24, 27)] == [1, 2, 2, 12, 13]


def test_bilinear_pooling_equals_transformers_llava_onevision():
    from types import SimpleNamespace

    from transformers.models.llava_onevision.modeling_llava_onevision import LlavaOnevisionModel

    for side in (4, 5, 27):  # 27: SigLIP-so400m at 384 px, OneVision's tower
        reference = SimpleNamespace(config=SimpleNamespace(vision_config=SimpleNamespace(image_size=side * 14,
                                                                                         patch_size=14)))
        frames = torch.randn(3, side * side, 8, generator=torch.Generator().manual_seed(side))
        theirs = LlavaOnevisionModel.apply_pooling(reference, frames)
        ours = pool_frames(frames, 2, "bilinear")
        assert ours.shape[1] == pooled_side(side, 2, "bilinear") ** 2
        torch.testing.assert_close(ours, theirs)


# ---------------------------------------------------------------- a clip's width on the host


def test_a_clips_width_is_frames_times_its_pooled_grid(tok, model, tmp_path):
    assert model.frame_token_count == 4  # 4 x 4 -> 2 x 2
    five = llava(tok, image_size=35)  # 5 x 5 patches
    assert five.frame_token_count == 3 * 3
    assert llava(tok, image_size=35, video_pool_mode="average").frame_token_count == 2 * 2
    assert llava(tok, image_size=35, video_pool=1).frame_token_count == 25
    assert llava(tok, image_size=35, video_pool=3).frame_token_count == 2 * 2

    data = dataset(model, tmp_path, [clip_record(tmp_path, xs=(20, 17, 14, 11, 8))])
    item = data[0]
    assert item["pixel_values"].shape == (5, 3, 28, 28) and item["clip_frames"] == [5]
    assert item["image_widths"] == [5 * 4]
    frame = model.vision.transform()(PIL.Image.open(tmp_path / "left" / "2.png"))
    torch.testing.assert_close(item["pixel_values"][2], frame)  # frames in order, by the tower's transform
    batch = Collator(model.tokenizer.pad_token_id, placeholders=model.image_placeholders)([item])
    assert int((batch["input_ids"] == model.language.image_token_id).sum()) == 20
    assert batch["clip_frames"] == [5] and batch["image_positions"].shape == (20,)


def test_max_length_counts_the_clip_and_never_cuts_it(model, tmp_path):
    record = clip_record(tmp_path)
    full = dataset(model, tmp_path, [record])[0]
    n = len(full["input_ids"])  # one <image> id stands for 3 x 4 positions
    assert dataset(model, tmp_path, [record], max_length=n + 11)[0]["input_ids"].tolist() == full["input_ids"].tolist()
    short = dataset(model, tmp_path, [record], max_length=n + 11 - 1)[0]
    assert short["input_ids"].tolist() == full["input_ids"][:-1].tolist()
    answer = next(i for i, lab in enumerate(full["labels"].tolist()) if lab != -100)
    kept = dataset(model, tmp_path, [record], max_length=answer + 1 + 11)[0]
    assert kept["input_ids"].tolist() == full["input_ids"][: answer + 1].tolist()
    cut = dataset(model, tmp_path, [record], max_length=12)[0]  # BOS + clip = 13 positions
    assert isinstance(cut, Dropped) and "would cut" in cut.reason


# ---------------------------------------------------------------- the clip in the model


def hand_pooled(model, frames: torch.Tensor) -> torch.Tensor:
    """(F x 4, D): each frame's 4 x 4 features averaged in 2 x 2 blocks, frames in order."""
    features = model.encode_images(frames)  # (F, 16, D), row-major
    blocks = features.view(frames.shape[0], 2, 2, 2, 2, -1)  # (F, block row, row in block, block col, col in block, D)
    return blocks.mean(dim=(2, 4)).flatten(0, 2)


def reference_logits(model, ids: torch.Tensor, clip: torch.Tensor) -> torch.Tensor:
    """transformers' decoder on one unpadded row whose placeholders hold the hand-pooled frames."""
    embeds = model.language.embed(ids[None])[0].clone()
    embeds[ids == model.language.image_token_id] = hand_pooled(model, clip)
    return model.language.model(inputs_embeds=embeds[None]).logits[0]


def test_logits_with_a_clip_equal_hand_pooled_frames_spliced_in(model, tmp_path):
    text_only = {"id": "text", "conversations": [{"from": "human", "value": "what colour is the circle"},
                                                 {"from": "gpt", "value": "red"}]}
    data = dataset(model, tmp_path, [image_record(tmp_path), clip_record(tmp_path), text_only,
                                     clip_record(tmp_path, "right", (8, 20), "right")])
    items = [data[i] for i in range(4)]
    batch = Collator(model.tokenizer.pad_token_id, placeholders=model.image_placeholders)(items)
    assert batch["clip_frames"] == [0, 3, 2]  # per <image> in order: the still, then the clips
    assert batch["pixel_values"].shape[0] == 1 + 3 + 2
    with torch.no_grad():
        logits, loss = model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["labels"],
                             image_positions=batch["image_positions"], clip_frames=batch["clip_frames"])
        assert torch.isfinite(loss)
        for row in (1, 3):
            ids = Collator(0, placeholders=model.image_placeholders)([items[row]])["input_ids"][0]
            clip = items[row]["pixel_values"]
            torch.testing.assert_close(logits[row, : len(ids)], reference_logits(model, ids, clip),
                                       atol=1e-5, rtol=1e-5)
            assert not torch.allclose(logits[row, : len(ids)], reference_logits(model, ids, clip.flip(0)), atol=1e-3)
        # the still image keeps its 16 unpooled tokens
        still = items[0]["pixel_values"]
        ids = Collator(0, placeholders=model.image_placeholders)([items[0]])["input_ids"][0]
        embeds = model.language.embed(ids[None])[0].clone()
        embeds[ids == model.language.image_token_id] = model.encode_images(still)[0]
        torch.testing.assert_close(logits[0, : len(ids)], model.language.model(inputs_embeds=embeds[None]).logits[0],
                                   atol=1e-5, rtol=1e-5)


def test_packed_clips_equal_padded_loss_and_wait_for_the_device_nowhere(model, tmp_path):
    from train.host_syncs import HostSyncCounter

    data = dataset(model, tmp_path, [clip_record(tmp_path), image_record(tmp_path),
                                     clip_record(tmp_path, "right", (8, 14, 20, 26), "right", extra_turn=True)])
    items = [data[i] for i in range(3)]
    padded = Collator(model.tokenizer.pad_token_id, placeholders=model.image_placeholders)(items)
    packed = PackingCollator(model.tokenizer.pad_token_id, model.image_placeholders, max_length=512)(items)
    assert packed["input_ids"].shape[0] == 1 and sorted(packed["clip_frames"]) == [0, 3, 4]
    keys = ("input_ids", "attention_mask", "pixel_values", "labels", "image_positions", "clip_frames")
    with torch.no_grad():
        _, padded_loss = model(**{k: padded[k] for k in keys})
    with HostSyncCounter() as syncs:
        _, packed_loss = model(**{k: packed[k] for k in keys}, segment_ids=packed["segment_ids"])
        packed_loss.backward()
    assert syncs.total == 0, dict(syncs.by_op)
    torch.testing.assert_close(packed_loss, padded_loss, atol=1e-5, rtol=1e-5)


def test_an_anyres_model_reads_clips_at_base_resolution(tok, tmp_path):
    anyres = llava(tok, image_grid_pinpoints=[(28, 56), (56, 28), (56, 56)])
    PIL.Image.new("RGB", (50, 30), (30, 30, 220)).save(tmp_path / "wide.png")
    wide = {"id": "wide", "image": "wide.png", "conversations": [
        {"from": "human", "value": "<image>\nwhat colour"}, {"from": "gpt", "value": "red"}]}
    data = dataset(anyres, tmp_path, [wide, clip_record(tmp_path)])
    items = [data[0], data[1]]
    assert items[1]["pixel_values"].shape == (3, 3, 28, 28) and items[1]["image_widths"] == [12]
    batch = PackingCollator(anyres.tokenizer.pad_token_id, anyres.image_placeholders, 512)(items)
    assert batch["clip_frames"] == [0, 3] and batch["image_sizes"] == [(30, 50)]
    with torch.no_grad():
        embeddings = anyres.image_embeddings(batch["pixel_values"], batch["image_sizes"], batch["clip_frames"])
        assert embeddings.shape[0] == 52 + 12
        torch.testing.assert_close(embeddings[52:], hand_pooled(anyres, items[1]["pixel_values"]))


def test_video_records_fail_at_construction_when_malformed_or_unreadable_by_the_model(model, tmp_path):
    both = {**clip_record(tmp_path), "image": "still.png"}
    with pytest.raises(ValueError, match="left has both `image` and `video`"):
        dataset(model, tmp_path, [both])
    two = clip_record(tmp_path)
    two["conversations"][0]["value"] = "<image> then <image>"
    with pytest.raises(ValueError, match=r"left \(2 <image>, 1 video\)"):
        dataset(model, tmp_path, [two])
    (tmp_path / "train.json").write_text(json.dumps([clip_record(tmp_path)]))
    with pytest.raises(ValueError, match="left has a video, which this reader does not take"):
        ConversationDataset(tmp_path / "train.json", model.tokenizer, ChatTemplate(), model.image_transform())


# ---------------------------------------------------------------- training and validation


def test_a_clip_record_with_an_image_free_turn_trains_and_validates(tok, model, tmp_path):
    records = [clip_record(tmp_path, extra_turn=True), clip_record(tmp_path, "right", (8, 14, 20), "right"),
               image_record(tmp_path)]
    (tmp_path / "train.json").write_text(json.dumps(records))
    qa = [{"id": "q", "video": records[1]["video"], "question": "Which way does the red circle move?",
           "answer": "right", "type": "direction"}]
    (tmp_path / "val.jsonl").write_text("\n".join(json.dumps(r) for r in qa))
    val = QADataset(tmp_path / "val.jsonl", model.tokenizer, ChatTemplate(), model.image_transform(),
                    clip_transform=model.clip_transform())
    assert val[0]["clip_frames"] == [3] and val[0]["meta"]["video"] == records[1]["video"]
    trained = llava(tok).train()
    module = VLMModule(trained, stage="full", lr=1e-3, warmup_ratio=0.0, max_new_tokens=2)
    data = ConversationDataModule(str(tmp_path / "train.json"), str(tmp_path / "val.jsonl"), batch_size=3,
                                  eval_batch_size=2, num_workers=0, max_length=256, pack_length=256)
    before = {n: p.detach().clone() for n, p in trained.connector.named_parameters()}
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=L.pytorch.loggers.CSVLogger(tmp_path),
                        log_every_n_steps=1, val_check_interval=2, check_val_every_n_epoch=None,
                        num_sanity_val_steps=0, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False)
    trainer.fit(module, datamodule=data)
    rows = list(csv.DictReader(open(tmp_path / "lightning_logs" / "version_0" / "metrics.csv")))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(before[n], p) for n, p in trained.connector.named_parameters())
    assert [r["val/acc_direction"] for r in rows if r.get("val/acc_direction")]  # the clip question was answered


def test_a_missing_frame_skips_the_sample_naming_the_frame(model, tmp_path):
    record = clip_record(tmp_path)
    (tmp_path / record["video"][1]).unlink()
    item = dataset(model, tmp_path, [record])[0]
    assert isinstance(item, Unreadable) and item.path == str(tmp_path / "left" / "1.png")
