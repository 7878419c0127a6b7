"""LLaVA-NeXT any-resolution: best-fit canvas, tiling, unpadding, newlines, the max-N cap and the
per-image token count, each against hand-worked values; and the data path (widths on the host,
truncation, collation, packing) agreeing with what the model writes."""

from __future__ import annotations

import json
import math

import PIL.Image
import pytest
import torch

from data.collate import Collator
from data.conversation_dataset import ConversationDataset
from data.packing import PackingCollator
from data.templates import ChatTemplate
from data.tokenize import Unfit, truncate
from data.tokenizer import train_tokenizer
from models.anyres import AnyResLayout, capped_grid, fitted_size, select_best_resolution, unpadded_window
from models.connectors import MLPConnector
from models.language import LanguageModel
from models.llava import LLaVA
from models.vision import HFVision
from tests.tiny import LM_CONFIG

CLIP = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "image_size": 28, "patch_size": 7, "projection_dim": 16}  # 4 x 4 patches per tile
PINPOINTS = [(28, 56), (56, 28), (56, 56)]
LLAVA_NEXT = [(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)]


def test_best_fit_keeps_most_pixels_then_wastes_least():
    # 300 x 800 (h, w): 336x1008 keeps all 240000 pixels (scale 1.12 > 1); 336x672 and 672x672 keep
    # 672*252 = 169344; the tall ones 336*126
    assert select_best_resolution((300, 800), LLAVA_NEXT) == (336, 1008)
    # 30 x 50 among the tiny grid: 56x56 keeps all 1500 pixels, 28x56 keeps 46*28 = 1288
    assert select_best_resolution((30, 50), PINPOINTS) == (56, 56)


def test_best_fit_ties_go_to_the_earlier_candidate():
    # a 100 x 100 image fits whole into every canvas; 336x672 and 672x336 waste the same 215792
    assert select_best_resolution((100, 100), LLAVA_NEXT) == (336, 672)
    assert select_best_resolution((100, 100), [(672, 336), (336, 672)]) == (672, 336)


def test_fit_rounds_the_short_side_up():
    assert fitted_size((30, 50), (56, 56)) == (34, 56)  # 30 * 56/50 = 33.6 -> 34
    assert fitted_size((50, 30), (56, 56)) == (56, 34)
    # 800 * (336/300) is 896.0000000000001 in floats: rounded up to 897, as transformers' processor does
    assert fitted_size((300, 800), (336, 1008)) == (336, 897)


def test_unpadding_crops_the_padding_rows_of_a_wide_image():
    # 30 x 50 on an 8 x 8 map: the image spans round(30 * 8/50) = 4 rows, padding (8-4)//2 = 2 above
    assert unpadded_window((30, 50), (8, 8)) == (slice(2, 6), slice(0, 8))
    # tall: 50 x 30 -> 4 columns from column 2
    assert unpadded_window((50, 30), (8, 8)) == (slice(0, 8), slice(2, 6))
    # same aspect ratio as the map: nothing cropped
    assert unpadded_window((40, 40), (8, 8)) == (slice(0, 8), slice(0, 8))


def _position_views(layout: AnyResLayout, size) -> torch.Tensor:
    """Views whose feature (row, col of the stitched map, -1) says where it is; the base view is 100."""
    p = layout.patch_side
    rows, cols = layout.tile_grid(size)
    views = [torch.full((p * p, 3), 100.0)]
    for tr in range(rows):
        for tc in range(cols):
            r, c = torch.meshgrid(torch.arange(p) + tr * p, torch.arange(p) + tc * p, indexing="ij")
            views.append(torch.stack([r, c, -torch.ones_like(r)], -1).flatten(0, 1).float())
    return torch.stack(views)


def test_pack_writes_base_then_unpadded_rows_each_ended_by_newline():
    layout = AnyResLayout(28, 4, tuple(PINPOINTS))
    size = (30, 50)  # canvas 56 x 56: 2 x 2 tiles, an 8 x 8 map; rows 2..5 hold the image
    newline = torch.tensor([7.0, 7.0, 7.0])
    out = layout.pack(_position_views(layout, size), size, newline)
    assert layout.feature_grid(size) == (4, 8)
    assert out.shape[0] == layout.num_tokens(size) == 16 + 4 * 9 == 52
    torch.testing.assert_close(out[:16], torch.full((16, 3), 100.0))
    expected = []
    for r in range(2, 6):
        expected += [[float(r), float(c), -1.0] for c in range(8)] + [[7.0, 7.0, 7.0]]
    torch.testing.assert_close(out[16:], torch.tensor(expected))


def test_max_tiles_cap_downsamples_bilinearly():
    # a square 50 x 50 image on 2 x 2 tiles: an 8 x 8 map, 4 tiles' worth; anyres_max_1 -> ratio
    # sqrt(64 / 16) = 2 -> 4 x 4; halving bilinearly averages each 2 x 2 block
    layout = AnyResLayout(28, 4, ((56, 56),), max_tiles=1)
    size = (50, 50)
    assert layout.feature_grid(size) == (4, 4)
    assert layout.num_tokens(size) == 16 + 4 * 5
    out = layout.pack(_position_views(layout, size), size, torch.zeros(3))[16:].view(4, 5, 3)
    i, j = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    torch.testing.assert_close(out[:, :4, 0], 2 * i + 0.5)  # mean of rows 2i, 2i+1
    torch.testing.assert_close(out[:, :4, 1], 2 * j + 0.5)
    torch.testing.assert_close(out[:, 4], torch.zeros(4, 3))  # newlines are not resampled
    # within 1.1 of the cap the map is kept: 8 x 8 = 4 tiles with anyres_max_4
    assert capped_grid(8, 8, 4, 4) == (8, 8)
    assert capped_grid(8, 8, 3, 4) == (6, 6)  # ratio sqrt(64/48) = 1.155 -> 8 // 1.155 = 6


@pytest.mark.parametrize("size", [(30, 50), (50, 30), (56, 20), (28, 28), (100, 37), (9, 200)])
@pytest.mark.parametrize("max_tiles", [None, 1, 2])
def test_pack_equals_transformers_llava_next_and_onevision(size, max_tiles):
    """Our stitching, unpadding, cap and newlines against transformers' own `pack_image_features`
    (LlavaNext without a cap, LlavaOnevision with `anyres_max_N`), on random features."""
    from types import SimpleNamespace

    from transformers.models.llava_next.modeling_llava_next import LlavaNextModel
    from transformers.models.llava_onevision.modeling_llava_onevision import LlavaOnevisionModel

    layout = AnyResLayout(28, 4, tuple(PINPOINTS), max_tiles)
    reference = SimpleNamespace(config=SimpleNamespace(vision_config=SimpleNamespace(image_size=28, patch_size=7),
                                                       image_grid_pinpoints=[list(p) for p in PINPOINTS]))
    g = torch.Generator().manual_seed(size[0] * 1000 + size[1])
    views = torch.randn(layout.num_views(size), 16, 5, generator=g)
    newline = torch.randn(5, generator=g)
    if max_tiles is None:
        theirs, lens = LlavaNextModel.pack_image_features(reference, [views], torch.tensor([size]), "default", newline)
    else:
        theirs, lens = LlavaOnevisionModel.pack_image_features(reference, [views], torch.tensor([size]), newline,
                                                               f"anyres_max_{max_tiles}")
    ours = layout.pack(views, size, newline)
    assert int(lens[0]) == layout.num_tokens(size) == ours.shape[0]
    torch.testing.assert_close(ours, theirs[0])


def test_truncation_never_cuts_an_anyres_image():
    img = 9
    ids = [1, img, 5, 6, img, 7]
    labels = [-100, -100, 5, 6, -100, 7]
    widths = [52, 36]  # positions: 1, 53, 54, 55, 91, 92
    assert truncate(ids, labels, 91, img, widths) == (ids[:5], labels[:5])
    with pytest.raises(Unfit, match="would cut"):
        truncate(ids, labels, 90, img, widths)
    with pytest.raises(Unfit):  # nor leaves an image out (its pixels would have no placeholders)
        truncate(ids, labels, 53, img, widths)


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(["a cat on a mat", "what colour is the square", "a red square"], out, vocab_size=300)
    return str(out)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    vision = HFVision(config=dict(CLIP), model_type="clip", select_layer=-2)
    language = LanguageModel(config=dict(LM_CONFIG), tokenizer=tok)
    return LLaVA(vision, language, MLPConnector, image_grid_pinpoints=PINPOINTS).eval()


def test_transform_tiles_the_padded_canvas(model):
    transform = model.image_transform()
    out = transform(PIL.Image.new("RGB", (50, 30), (255, 255, 255)))  # PIL size is (width, height)
    assert out.size == (30, 50) and out.num_tokens == 52
    assert out.views.shape == (5, 3, 28, 28)  # base + 2 x 2 tiles
    mean, std = torch.tensor(transform.base.mean)[:, None], torch.tensor(transform.base.std)[:, None]
    black, white = (-mean / std), ((1 - mean) / std)
    # the 56 x 56 canvas holds the 34-row image from row 11 (top tiles: rows 0..10 black)
    top, bottom = out.views[1], out.views[3]
    torch.testing.assert_close(top[:, :11].flatten(1), black.expand(3, 11 * 28))
    torch.testing.assert_close(top[:, 11:].flatten(1), white.expand(3, 17 * 28))
    torch.testing.assert_close(bottom[:, :17].flatten(1), white.expand(3, 17 * 28))
    torch.testing.assert_close(bottom[:, 17:].flatten(1), black.expand(3, 11 * 28))


def _write_data(root, sizes):
    records = []
    for n, (h, w) in enumerate(sizes):
        PIL.Image.new("RGB", (w, h), (40 * n, 90, 200)).save(root / f"{n}.png")
        records.append({"id": str(n), "image": f"{n}.png", "conversations": [
            {"from": "human", "value": "<image>\nwhat colour is the square"}, {"from": "gpt", "value": "a red square"}]})
    (root / "train.json").write_text(json.dumps(records))
    return root / "train.json"


def test_dataset_widths_equal_what_the_model_writes(model, tmp_path):
    sizes = [(30, 50), (50, 30), (28, 28)]
    path = _write_data(tmp_path, sizes)
    data = ConversationDataset(path, model.tokenizer, ChatTemplate(), model.image_transform())
    items = [data[i] for i in range(len(sizes))]
    assert [it["image_sizes"] for it in items] == [[s] for s in sizes]
    assert [it["image_widths"] for it in items] == [[model.image_token_count(s)] for s in sizes] == [[52], [56], [36]]  # tall: 8 rows of 4 + newline
    batch = Collator(model.tokenizer.pad_token_id, placeholders=model.image_placeholders)(items)
    assert batch["image_sizes"] == sizes
    embeddings = model.image_embeddings(batch["pixel_values"], batch["image_sizes"])
    assert embeddings.shape[0] == batch["image_positions"].shape[0] == 52 + 56 + 36
    # each row's placeholders are as many as its image's width, and the forward accepts the batch
    image_id = model.language.image_token_id
    assert (batch["input_ids"] == image_id).sum(1).tolist() == [52, 56, 36]
    with torch.no_grad():
        _, loss = model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["labels"],
                        image_positions=batch["image_positions"], image_sizes=batch["image_sizes"])
    assert torch.isfinite(loss)


def test_anyres_training_step_waits_for_the_device_nowhere(model, tmp_path):
    """Sizes and widths are host ints from the collator: stitching, unpadding, the cap and the
    splice read no tensor value (`train.host_syncs`)."""
    from train.host_syncs import HostSyncCounter

    capped = LLaVA(model.vision, model.language, MLPConnector, image_grid_pinpoints=PINPOINTS, anyres_max_tiles=1)
    path = _write_data(tmp_path, [(30, 50), (56, 20), (50, 50)])
    data = ConversationDataset(path, capped.tokenizer, ChatTemplate(), capped.image_transform())
    batch = PackingCollator(capped.tokenizer.pad_token_id, capped.image_placeholders, 512)([data[i] for i in range(3)])
    assert [capped.image_token_count(s) for s in [(50, 50)]] == [16 + 4 * 5]  # capped from 8 x 8
    with HostSyncCounter() as syncs:
        _, loss = capped(**{k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "labels",
                                                  "segment_ids", "image_positions", "image_sizes")})
        loss.backward()
    assert syncs.total == 0, dict(syncs.by_op)
    assert capped.image_newline.weight.grad.abs().sum() > 0


def test_dataset_drops_a_sample_whose_image_would_be_cut(model, tmp_path):
    path = _write_data(tmp_path, [(30, 50)])
    data = ConversationDataset(path, model.tokenizer, ChatTemplate(), model.image_transform(), max_length=40)
    assert type(data[0]).__name__ == "Dropped" and "would cut" in data[0].reason


def test_packed_batch_has_equal_loss_and_sizes_in_pixel_order(model, tmp_path):
    sizes = [(30, 50), (56, 20), (28, 28)]
    path = _write_data(tmp_path, sizes)
    data = ConversationDataset(path, model.tokenizer, ChatTemplate(), model.image_transform())
    items = [data[i] for i in range(len(sizes))]
    packed = PackingCollator(model.tokenizer.pad_token_id, model.image_placeholders, max_length=512)(items)
    padded = Collator(model.tokenizer.pad_token_id, placeholders=model.image_placeholders)(items)
    assert packed["input_ids"].shape[0] == 1 and sorted(packed["image_sizes"]) == sorted(sizes)
    views = {tuple(it["image_sizes"][0]): it["pixel_values"] for it in items}
    torch.testing.assert_close(packed["pixel_values"], torch.cat([views[s] for s in packed["image_sizes"]]))
    with torch.no_grad():
        _, packed_loss = model(**{k: packed[k] for k in ("input_ids", "attention_mask", "pixel_values", "labels",
                                                        "segment_ids", "image_positions", "image_sizes")})
        _, padded_loss = model(**{k: padded[k] for k in ("input_ids", "attention_mask", "pixel_values", "labels",
                                                        "image_positions", "image_sizes")})
    torch.testing.assert_close(packed_loss, padded_loss, atol=1e-5, rtol=1e-5)


def test_bad_grid_and_cap_without_grid_are_named(tok):
    vision = HFVision(config=dict(CLIP), model_type="clip", select_layer=-2)
    language = LanguageModel(config=dict(LM_CONFIG), tokenizer=tok)
    with pytest.raises(ValueError, match="multiples of the tower's image size 28"):
        LLaVA(vision, language, MLPConnector, image_grid_pinpoints=[(28, 50)])
    with pytest.raises(ValueError, match="anyres_max_tiles needs image_grid_pinpoints"):
        LLaVA(vision, language, MLPConnector, anyres_max_tiles=4)


def test_tiny_config_trains_with_packing_and_validates_by_generation(tmp_path):
    """The shipped config (smaller parts, fresh data): packed any-resolution batches train, the loss
    is finite at every step and validation generates from any-resolution prompts."""
    import csv

    import yaml

    from data.shapes import write_shapes
    from train.cli import main

    shapes = tmp_path / "shapes"
    write_shapes(shapes, train_images=8, val_images=2, seed=0, max_objects=2)
    cfg = yaml.safe_load(open("configs/experiments/llava_next_shapes_tiny.yaml"))
    cfg["trainer"].update({"max_steps": 3, "val_check_interval": 3, "log_every_n_steps": 1, "callbacks": [],
                           "enable_progress_bar": False, "enable_model_summary": False, "enable_checkpointing": False,
                           "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                                      "init_args": {"save_dir": str(tmp_path), "name": "next"}}})
    model = cfg["model"]["init_args"]["model"]["init_args"]
    model["vision"]["init_args"].update({"pretrained": None})
    model["vision"]["init_args"]["model_config"]["vision_cfg"].update({"layers": 1, "width": 32, "head_width": 16})
    model["language"]["init_args"].update({"tokenizer": str(shapes / "tokenizer"),
                                           "config": {**LM_CONFIG, "max_position_embeddings": 1024}})
    cfg["data"]["init_args"].update({"train_json": str(shapes / "train.json"), "val_qa": str(shapes / "val_qa.jsonl"),
                                     "batch_size": 4, "eval_batch_size": 2, "max_val_samples": 2, "num_workers": 0})
    path = tmp_path / "next.yaml"
    path.write_text(yaml.safe_dump(cfg))
    main(["fit", "--config", str(path)])
    rows = list(csv.DictReader(open(tmp_path / "next" / "version_0" / "metrics.csv")))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert [r["val/acc"] for r in rows if r.get("val/acc")]  # validation generated and was scored
    # the newline trains with the connector (stage finetune), the tower does not
    counts = next(r for r in rows if r.get("params/image_newline_trainable"))
    assert float(counts["params/image_newline_trainable"]) == float(counts["params/image_newline_total"]) == 32
    assert float(counts["params/vision_trainable"]) == 0
    assert not any(float(r["train/dropped_samples"] or 0) for r in rows)
