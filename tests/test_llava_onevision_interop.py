"""LlavaOnevision interop: our any-resolution LLaVA (tile cap, pooled clips ending with the newline)
exported to transformers' `LlavaOnevisionForConditionalGeneration` and imported back, proved by equal
logits on tiny random models: non-square images with the cap reached, two images of different aspect
ratios in one sample, and clips of pooled frames; and by its processor widening as our model writes."""

from __future__ import annotations

import copy
import json

import numpy as np
import PIL.Image
import pytest
import torch

from data.video_frames import ClipTransform
from models.hf_llava_onevision import export_hf_llava_onevision, import_hf_llava_onevision, vision_aspect_ratio
from tests.test_llava_next_interop import PINPOINTS, build, tok  # noqa: F401 (tok is a fixture)
from train.cli import main
from train.checkpoint import load_module
from train.export import _save_module

ONEVISION = {"image_grid_pinpoints": PINPOINTS, "anyres_max_tiles": 1, "video_newline": True}
# (height, width) -> tile map after unpadding -> after anyres_max_1 (4 x 4 patches a tile):
# 30 x 50: 56 x 56 canvas, 8 x 8 map, rows 2:6 -> 4 x 8, ratio sqrt(32 / 16) > 1.1 -> 2 x 5
# 56 x 20: 56 x 28 canvas, 8 x 4 map, columns 1:3 -> 8 x 2, ratio 1 -> kept
SIZES = [(30, 50), (56, 20)]
TOKENS = [16 + 2 * (5 + 1), 16 + 8 * (2 + 1)]
FRAMES = 3  # a frame's 4 x 4 features pool to 2 x 2: a clip takes 3 * 4 + 1 (newline) positions


@pytest.fixture(scope="module")
def exported(tok, tmp_path_factory):  # noqa: F811
    model = build(tok, **ONEVISION)
    with torch.no_grad():  # a non-zero, non-default newline, so a misplaced one shows
        model.image_newline.weight.normal_()
    return model, export_hf_llava_onevision(model, tmp_path_factory.mktemp("ov") / "hf")


def noise(size, seed):
    g = torch.Generator().manual_seed(seed)
    return PIL.Image.fromarray(torch.randint(0, 256, (*size, 3), generator=g, dtype=torch.uint8).numpy())


def rows_of(model, widths_per_row):
    """Random text ids with one `<image>` per medium, widened to each medium's width, right-padded."""
    g = torch.Generator().manual_seed(3)
    rows = []
    for widths in widths_per_row:
        ids = torch.randint(5, 250, (3 + 2 * len(widths),), generator=g)
        ids[1:1 + 2 * len(widths):2] = model.language.image_token_id
        rows.append(model.image_placeholders.widen(ids, widths=widths)[0])
    length = max(len(r) for r in rows)
    ids = torch.stack([torch.cat([r, r.new_zeros(length - len(r))]) for r in rows])
    return ids, torch.stack([torch.arange(length) < len(r) for r in rows]).long()


def image_inputs(model, per_row):
    """Ours and transformers' inputs for rows of images (`per_row`: the image sizes of each row);
    transformers' views padded to (images, max views, 3, S, S), no `batch_num_images` (every image at
    any resolution, as ours reads it)."""
    transform = model.image_transform()
    rows = [[transform(noise(size, 7 * r + k)) for k, size in enumerate(sizes)] for r, sizes in enumerate(per_row)]
    ids, mask = rows_of(model, [[im.num_tokens for im in ims] for ims in rows])
    ims = [im for ims in rows for im in ims]
    most = max(len(im.views) for im in ims)
    padded = torch.stack([torch.cat([im.views, im.views.new_zeros(most - len(im.views), *im.views.shape[1:])])
                          for im in ims])
    ours = {"input_ids": ids, "attention_mask": mask, "pixel_values": torch.cat([im.views for im in ims]),
            "image_sizes": [im.size for im in ims]}
    theirs = {"input_ids": ids, "attention_mask": mask, "pixel_values": padded,
              "image_sizes": torch.tensor([im.size for im in ims])}
    return ours, theirs


def clip_inputs(model, clips: int, video_id: int, image_size=None):
    """One row with an image of `image_size` (if given) then `clips` clips of FRAMES frames each; where
    ours has `<image>` for a clip, transformers' ids have `<video>` (`video_id`)."""
    transform = model.clip_transform()
    media = [transform([noise((40, 24), 11 * c + f) for f in range(FRAMES)]) for c in range(clips)]
    image = None if image_size is None else model.image_transform()(noise(image_size, 5))
    ids, mask = rows_of(model, [([image.num_tokens] if image else []) + [clip.num_tokens for clip in media]])
    theirs_ids = ids.clone()
    first_clip = image.num_tokens + 1 if image else 0  # the image starts at 1
    at_clips = (ids == model.language.image_token_id) & (torch.arange(ids.shape[1]) > first_clip)
    theirs_ids[at_clips] = video_id
    ours = {"input_ids": ids, "attention_mask": mask, "clip_frames": ([0] if image else []) + [FRAMES] * clips,
            "pixel_values": torch.cat(([image.views] if image else []) + [c.frames for c in media])}
    theirs = {"input_ids": theirs_ids, "attention_mask": mask,
              "pixel_values_videos": torch.stack([c.frames for c in media])}
    if image:
        ours["image_sizes"] = [image.size]
        theirs.update(pixel_values=image.views[None], image_sizes=torch.tensor([image.size]))
    return ours, theirs


CASES = {
    "non-square images, cap reached": lambda m, video: image_inputs(m, [[SIZES[0]], [SIZES[1]]]),
    "two images in one sample": lambda m, video: image_inputs(m, [SIZES]),
    "two clips in one sample": lambda m, video: clip_inputs(m, 2, video),
    "an image then a clip": lambda m, video: clip_inputs(m, 1, video, image_size=SIZES[0]),
}


def video_id(path) -> int:
    return json.loads((path / "config.json").read_text())["video_token_index"]


@pytest.fixture(scope="module")
def hf_model(exported):
    from transformers import LlavaOnevisionForConditionalGeneration

    return LlavaOnevisionForConditionalGeneration.from_pretrained(exported[1]).eval()


def test_export_config_maps_our_settings(exported):
    model, path = exported
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["vision_aspect_ratio"] == "anyres_max_1" and cfg["image_grid_pinpoints"] == [list(p) for p in PINPOINTS]
    vocab = len(model.tokenizer)
    assert cfg["image_token_index"] == model.language.image_token_id and cfg["video_token_index"] == vocab
    assert cfg["text_config"]["vocab_size"] == vocab + 1  # <video> is one more token
    assert [model.image_token_count(s) for s in SIZES] == TOKENS
    assert model.clip_transform().width(FRAMES) == FRAMES * 4 + 1


@pytest.mark.parametrize("case", list(CASES))
def test_export_has_equal_logits(exported, hf_model, case):
    model, path = exported
    ours, theirs = CASES[case](model, video_id(path))
    with torch.no_grad():
        logits, _ = model(**ours)
        hf_logits = hf_model(**theirs).logits
    vocab = logits.shape[-1]
    assert hf_logits.shape == (*logits.shape[:2], vocab + 1)
    mask = ours["attention_mask"].bool()
    torch.testing.assert_close(hf_logits[mask][:, :vocab], logits[mask], atol=1e-5, rtol=1e-5)
    # the <video> column is <image>'s: the same output row
    torch.testing.assert_close(hf_logits[..., vocab], hf_logits[..., model.language.image_token_id])


def test_the_cap_and_clip_newline_change_the_logits(exported, tok):  # noqa: F811
    """The parity above is about the cap and the newline: without them the same weights read otherwise."""
    model, _ = exported
    uncapped = build(tok, image_grid_pinpoints=PINPOINTS, video_newline=True)
    assert uncapped.image_token_count(SIZES[0]) == 16 + 4 * 9 != TOKENS[0]
    moved_newline = copy.deepcopy(model)
    ours, _ = clip_inputs(model, 1, video_id=0)
    with torch.no_grad():
        moved_newline.image_newline.weight.add_(1.0)
        moved, _ = moved_newline(**ours)
        logits, _ = model(**ours)
    newline_at = int((ours["input_ids"][0] == model.language.image_token_id).nonzero().max())  # the clip's last
    assert torch.equal(moved[0, :newline_at], logits[0, :newline_at])
    assert not torch.allclose(moved[0, newline_at:], logits[0, newline_at:])


def test_tied_embeddings_export_one_grown_matrix(tok, tmp_path):  # noqa: F811
    from transformers import LlavaOnevisionForConditionalGeneration

    from models.connectors import MLPConnector
    from models.language import LanguageModel
    from models.llava import LLaVA
    from models.vision import HFVision
    from tests.test_llava_next_interop import CLIP
    from tests.tiny import LM_CONFIG

    torch.manual_seed(0)
    language = LanguageModel(config={**LM_CONFIG, "tie_word_embeddings": True}, tokenizer=tok)
    model = LLaVA(HFVision(config=dict(CLIP), model_type="clip", select_layer=-2), language, MLPConnector,
                  **ONEVISION).eval()
    path = export_hf_llava_onevision(model, tmp_path / "hf")
    hf = LlavaOnevisionForConditionalGeneration.from_pretrained(path).eval()
    assert hf.lm_head.weight is hf.model.language_model.embed_tokens.weight
    ours, theirs = CASES["an image then a clip"](model, video_id(path))
    with torch.no_grad():
        logits, _ = model(**ours)
        hf_logits = hf(**theirs).logits
    torch.testing.assert_close(hf_logits[..., :logits.shape[-1]], logits, atol=1e-5, rtol=1e-5)


def test_import_round_trip_gives_identical_weights_and_logits(exported):
    """Identical up to the `<video>` row the export adds (a copy of `<image>`'s): our vocabulary's rows,
    and the logits over it, are the same bits."""
    model, path = exported
    imported = import_hf_llava_onevision(path)
    assert imported.anyres == model.anyres and imported.vision.image_mode == "resize"
    assert (imported.video_pool, imported.video_pool_mode, imported.video_newline) == (2, "bilinear", True)
    vocab, image = len(model.tokenizer), model.language.image_token_id
    assert len(imported.tokenizer) == vocab + 1 and imported.language.image_token_id == image
    theirs, mine = imported.state_dict(), model.state_dict()
    assert theirs.keys() == mine.keys()
    for k, v in mine.items():
        if theirs[k].shape == v.shape:
            assert torch.equal(theirs[k], v), k
        else:  # a token-row matrix
            assert torch.equal(theirs[k][:vocab], v) and torch.equal(theirs[k][vocab], v[image]), k
    for case, make in CASES.items():
        ours, _ = make(model, video_id(path))
        with torch.no_grad():
            assert torch.equal(imported(**ours)[0][..., :vocab], model(**ours)[0]), case


def test_cli_import_then_export_gives_the_same_directory_weights(exported, tmp_path):
    from safetensors.torch import load_file

    model, path = exported
    main(["import", "--format", "hf-llava-onevision", "--src", str(path), "--out", str(tmp_path / "back")])
    module = load_module(tmp_path / "back" / "model.ckpt")
    assert module.model.anyres == model.anyres and module.model.video_newline
    main(["export", "--ckpt", str(tmp_path / "back" / "model.ckpt"), "--format", "hf-llava-onevision",
          "--out", str(tmp_path / "again")])
    first, second = load_file(path / "model.safetensors"), load_file(tmp_path / "again" / "model.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    config = json.loads((tmp_path / "again" / "config.json").read_text())
    assert config["vision_aspect_ratio"] == "anyres_max_1"
    # a checkpoint whose clips end without the newline is refused, naming the setting
    module.chimera_config["init_args"]["model"]["init_args"]["video_newline"] = False
    _save_module(module, module.chimera_config, tmp_path / "plain", "test")
    with pytest.raises(ValueError, match="cannot export as LlavaOnevision: video_newline=False"):
        main(["export", "--ckpt", str(tmp_path / "plain" / "model.ckpt"), "--format", "hf-llava-onevision",
              "--out", str(tmp_path / "refused")])
    assert not (tmp_path / "refused").exists()


def test_processor_widens_images_and_clips_as_we_do(exported):
    from transformers import AutoImageProcessor, AutoProcessor

    model, path = exported
    processor = AutoProcessor.from_pretrained(path)
    pil = AutoImageProcessor.from_pretrained(path, backend="pil")  # PIL resizes as our transform does
    token = processor.image_token
    for k, (size, width) in enumerate(zip(SIZES, TOKENS)):
        im = noise(size, k)
        enc = processor(text=f"{token} what colour", images=[im], return_tensors="pt")
        assert enc["image_sizes"].tolist() == [list(size)]
        assert int((enc["input_ids"] == model.language.image_token_id).sum()) == width
        pixels = pil(images=[im], return_tensors="pt")["pixel_values"][0]
        torch.testing.assert_close(pixels, model.image_transform()(im).views, atol=0, rtol=0)
    frames = torch.stack([torch.from_numpy(np.asarray(noise((28, 28), f))) for f in range(FRAMES)])
    enc = processor(text=f"{token} and {processor.video_token} what moves", images=[noise(SIZES[0], 0)],
                    videos=[frames.numpy()], return_tensors="pt")
    assert int((enc["input_ids"] == model.language.image_token_id).sum()) == TOKENS[0]
    assert int((enc["input_ids"] == video_id(path)).sum()) == model.clip_transform().width(FRAMES) == FRAMES * 4 + 1
    assert enc["pixel_values_videos"].shape == (1, FRAMES, 3, 28, 28)


def test_an_uncapped_model_exports_a_cap_that_never_applies(tok):  # noqa: F811
    model = build(tok, image_grid_pinpoints=PINPOINTS, video_newline=True)
    assert vision_aspect_ratio(model) == "anyres_max_4"  # the 56 x 56 pinpoint's 2 x 2 tiles


@pytest.mark.parametrize("settings, cause", [
    ({}, "no image_grid_pinpoints"),
    ({**ONEVISION, "video_pool": 1}, "video_pool=1"),
    ({**ONEVISION, "video_pool_mode": "average"}, "video_pool_mode='average'"),
    ({**ONEVISION, "video_newline": False}, "video_newline=False"),
])
def test_export_refuses_settings_onevision_lacks(tok, tmp_path, settings, cause):  # noqa: F811
    with pytest.raises(ValueError, match=f"cannot export as LlavaOnevision: .*{cause}"):
        export_hf_llava_onevision(build(tok, **settings), tmp_path)


def test_import_refuses_an_aspect_ratio_it_cannot_read(exported, tmp_path):
    import shutil

    _, path = exported
    shutil.copytree(path, tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**cfg, "vision_aspect_ratio": "pad"}))
    with pytest.raises(ValueError, match="vision_aspect_ratio 'pad' is not 'anyres_max_N'"):
        import_hf_llava_onevision(tmp_path / "hf")
    with pytest.raises(FileNotFoundError, match="not a transformers LlavaOnevision directory"):
        import_hf_llava_onevision(tmp_path / "missing")


def test_clip_transform_counts_the_newline(tok):  # noqa: F811
    clip = ClipTransform(lambda im: torch.zeros(3, 4, 4), frame_tokens=4, end_tokens=1)([noise((4, 4), 0)] * 2)
    assert clip.num_tokens == 2 * 4 + 1 and clip.frames.shape == (2, 3, 4, 4)
    square = build(tok, video_newline=True)  # a LLaVA-1.5 too: the newline is learned for its clips
    assert square.clip_transform().width(2) == 2 * 4 + 1 and square.image_newline.weight.shape == (32,)
    assert square.media_spans(3, clip_frames=[2, 0]) == [(2, 9), (1, 16)]
