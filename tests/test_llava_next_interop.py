"""LlavaNext interop: our any-resolution LLaVA exported to transformers' `LlavaNextForConditionalGeneration`
and imported back, proved by equal logits on non-square images of different grids (tiny, random
weights), and by transformers' processor widening each image to the positions our model writes."""

from __future__ import annotations

import PIL.Image
import pytest
import torch

from data.tokenizer import train_tokenizer
from models.connectors import MLPConnector
from models.hf_llava_next import export_hf_llava_next, import_hf_llava_next
from models.interop import export_hf_llava
from models.language import LanguageModel
from models.llava import LLaVA
from models.vision import HFVision
from tests.tiny import LM_CONFIG

CLIP = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2,
        "image_size": 28, "patch_size": 7, "projection_dim": 16}  # 4 x 4 patches per tile
PINPOINTS = [(28, 56), (56, 28), (56, 56)]
# (height, width): 30 x 50 -> 56 x 56 canvas (2 x 2 tiles, rows cropped); 56 x 20 -> 56 x 28 (2 x 1, columns cropped)
SIZES = [(30, 50), (56, 20)]


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(["a cat on a mat", "what colour is the square"], out, vocab_size=300)
    return str(out)


def build(tok, **anyres) -> LLaVA:
    torch.manual_seed(0)
    vision = HFVision(config=dict(CLIP), model_type="clip", select_layer=-2)
    language = LanguageModel(config=dict(LM_CONFIG), tokenizer=tok)
    return LLaVA(vision, language, MLPConnector, **anyres).eval()


@pytest.fixture(scope="module")
def exported(tok, tmp_path_factory):
    model = build(tok, image_grid_pinpoints=PINPOINTS)
    with torch.no_grad():  # a non-zero, non-default newline, so a misplaced one shows
        model.image_newline.weight.normal_()
    return model, export_hf_llava_next(model, tmp_path_factory.mktemp("next") / "hf")


def images() -> list[PIL.Image.Image]:
    g = torch.Generator().manual_seed(1)
    return [PIL.Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy())
            for h, w in SIZES]


def inputs(model, per_row=((0,), (1,))):
    """Our batch (views concatenated, `<image>` widened per image) and transformers' (views padded
    to (images, max views, 3, S, S), `image_sizes` as a tensor); `per_row`: which of `images()` each
    sample holds, in order (default: two samples of one image each)."""
    transform = model.image_transform()
    every = [transform(im) for im in images()]
    g = torch.Generator().manual_seed(3)
    rows = []
    for row in per_row:
        ids = torch.randint(5, 250, (4 + 2 * len(row),), generator=g)
        ids[1:1 + 2 * len(row):2] = model.language.image_token_id
        rows.append(model.image_placeholders.widen(ids, widths=[every[k].num_tokens for k in row])[0])
    ims = [every[k] for row in per_row for k in row]
    length = max(len(r) for r in rows)
    ids = torch.stack([torch.cat([r, r.new_zeros(length - len(r))]) for r in rows])
    mask = torch.stack([torch.arange(length) < len(r) for r in rows]).long()
    ours = {"input_ids": ids, "attention_mask": mask, "pixel_values": torch.cat([im.views for im in ims]),
            "image_sizes": [im.size for im in ims]}
    most = max(len(im.views) for im in ims)
    padded = torch.stack([torch.cat([im.views, im.views.new_zeros(most - len(im.views), *im.views.shape[1:])])
                          for im in ims])
    theirs = {"input_ids": ids, "attention_mask": mask, "pixel_values": padded,
              "image_sizes": torch.tensor([im.size for im in ims])}
    return ours, theirs


def assert_equal_logits(model, hf, ours: dict, theirs: dict) -> None:
    """Our logits equal transformers' at every attended position (fp32, 1e-5)."""
    with torch.no_grad():
        logits, _ = model(**ours)
        hf_logits = hf(**theirs).logits
    assert hf_logits.shape == logits.shape
    mask = ours["attention_mask"].bool()
    torch.testing.assert_close(hf_logits[mask], logits[mask], atol=1e-5, rtol=1e-5)


def test_export_has_equal_logits_on_non_square_images(exported):
    from transformers import LlavaNextForConditionalGeneration

    model, path = exported
    hf = LlavaNextForConditionalGeneration.from_pretrained(path).eval()
    ours, theirs = inputs(model)
    assert ours["image_sizes"] == SIZES and [model.image_token_count(s) for s in SIZES] == [16 + 4 * 9, 16 + 8 * 3]
    assert_equal_logits(model, hf, ours, theirs)


def test_export_has_equal_logits_on_two_images_of_different_aspect_ratios_in_one_sample(exported):
    """30 x 50 (2 x 2 tiles, rows cropped) then 56 x 20 (2 x 1 tiles, columns cropped) in one sequence,
    after a sample with the second image alone: each image's tiles stitched and unpadded on its own."""
    from transformers import LlavaNextForConditionalGeneration

    model, path = exported
    hf = LlavaNextForConditionalGeneration.from_pretrained(path).eval()
    ours, theirs = inputs(model, per_row=((0, 1), (1,)))
    assert ours["image_sizes"] == [SIZES[0], SIZES[1], SIZES[1]] and ours["pixel_values"].shape[0] == 5 + 3 + 3
    assert int((ours["input_ids"][0] == model.language.image_token_id).sum()) == (16 + 4 * 9) + (16 + 8 * 3)
    assert_equal_logits(model, hf, ours, theirs)


def test_import_has_equal_logits(exported):
    from transformers import LlavaNextForConditionalGeneration

    model, path = exported
    imported = import_hf_llava_next(path)
    assert imported.anyres == model.anyres and imported.vision.image_mode == "resize"
    hf = LlavaNextForConditionalGeneration.from_pretrained(path).eval()
    ours, theirs = inputs(imported)
    with torch.no_grad():
        logits, _ = imported(**ours)
        hf_logits = hf(**theirs).logits
    mask = ours["attention_mask"].bool()
    torch.testing.assert_close(hf_logits[mask], logits[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(imported.image_newline.weight, model.image_newline.weight)


def test_processor_widens_and_tiles_each_image_as_we_do(exported):
    from transformers import AutoProcessor

    model, path = exported
    processor = AutoProcessor.from_pretrained(path, backend="pil")  # PIL resizes as our transform does
    image_token = processor.image_token
    for im, size in zip(images(), SIZES):
        enc = processor(text=f"{image_token} what colour", images=[im], return_tensors="pt")
        assert enc["image_sizes"].tolist() == [list(size)]
        assert int((enc["input_ids"] == model.language.image_token_id).sum()) == model.image_token_count(size)
        # the same base view and tiles, bit for bit
        torch.testing.assert_close(enc["pixel_values"][0], model.image_transform()(im).views, atol=0, rtol=0)


def test_refusals_name_the_cause(tok, tmp_path):
    with pytest.raises(ValueError, match="no image_grid_pinpoints"):
        export_hf_llava_next(build(tok), tmp_path / "a")
    with pytest.raises(ValueError, match="OneVision's cap"):
        export_hf_llava_next(build(tok, image_grid_pinpoints=PINPOINTS, anyres_max_tiles=2), tmp_path / "b")
    with pytest.raises(ValueError, match="any resolution"):
        export_hf_llava(build(tok, image_grid_pinpoints=PINPOINTS), tmp_path / "c")
