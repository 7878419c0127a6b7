"""Vision encoders: shapes, exact features vs. the libraries, save/load, errors.

All models are tiny and randomly initialised; nothing is downloaded.
"""

import pickle

import PIL.Image
import pytest
import torch

from models.vision import (
    HFVision,
    ImageTransform,
    OpenCLIPVision,
    TimmVision,
    VisionEncoder,
    grid_coords,
)
from models.vision import _hf_classes

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# 32x32 input, 8x8 patches -> 16 patch tokens of width 32, 3 blocks.
OPEN_CLIP_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}
HF_CFG = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
    image_size=32, patch_size=8,
)
# ResNet-10-T with tiny widths. On 75x75: stem /4 -> 19, layer2 -> 10, layer3 -> 5, layer4 -> 3.
RESNET_KW = dict(channels=(16, 32, 64, 128), stem_width=16)
VIT_KW = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


@pytest.fixture(scope="module")
def openclip_enc():
    return OpenCLIPVision(model_config=OPEN_CLIP_CFG).eval()


@pytest.fixture(scope="module")
def hf_enc():
    return HFVision(config=HF_CFG).eval()


@pytest.fixture(scope="module")
def resnet_enc():
    return TimmVision("resnet10t", model_kwargs=RESNET_KW, image_size=75, select_layer=-2).eval()


@pytest.fixture(scope="module")
def vit_enc():
    return TimmVision("vit_tiny_patch16_224", model_kwargs=VIT_KW).eval()


def _x(enc: VisionEncoder, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, enc.image_size, enc.image_size)


# ---------------------------------------------------------------------------
# open_clip
# ---------------------------------------------------------------------------


def _openclip_manual(visual, pixels: torch.Tensor, n_blocks: int) -> torch.Tensor:
    """Patch tokens after the first ``n_blocks`` blocks, written out by hand."""
    assert visual.transformer.batch_first
    x = visual.conv1(pixels).flatten(2).transpose(1, 2)
    cls = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding
    x = visual.ln_pre(x)
    for block in visual.transformer.resblocks[:n_blocks]:
        x = block(x)
    return x[:, 1:]


def test_openclip_shape_and_manual_features(openclip_enc):
    enc = openclip_enc
    assert (enc.image_size, enc.num_patches, enc.dim) == (32, 16, 32)
    assert enc.mean == pytest.approx(OPENAI_MEAN) and enc.std == pytest.approx(OPENAI_STD)
    x = _x(enc, 3)
    with torch.no_grad():
        out = enc(x)
        ref = _openclip_manual(enc.model, x, n_blocks=2)  # select_layer -2 of 3 blocks
    assert out.shape == (3, 16, 32)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


def test_openclip_select_layer_changes_features(openclip_enc):
    enc_last = OpenCLIPVision(model_config=OPEN_CLIP_CFG, select_layer=-1).eval()
    enc_last.load_state_dict(openclip_enc.state_dict())
    x = _x(openclip_enc)
    with torch.no_grad():
        a, b = openclip_enc(x), enc_last(x)
        ref = _openclip_manual(enc_last.model, x, n_blocks=3)
    assert a.shape == b.shape and not torch.allclose(a, b)
    torch.testing.assert_close(b, ref, rtol=0, atol=1e-6)


def test_openclip_add_coords_appends_grid_to_the_same_features(openclip_enc):
    enc = OpenCLIPVision(model_config=OPEN_CLIP_CFG, add_coords=True).eval()
    enc.load_state_dict(openclip_enc.state_dict())
    assert (enc.num_patches, enc.dim) == (16, 34)
    x = _x(enc)
    with torch.no_grad():
        out, plain = enc(x), openclip_enc(x)
    assert torch.equal(out[..., :-2], plain)
    assert torch.equal(out[..., -2:], grid_coords(4, 4).expand(len(x), -1, -1))
    torch.testing.assert_close(out[0, 5, -2:], torch.tensor([-1 / 3, -1 / 3]))  # row 1, column 1 of 4
    scaled = OpenCLIPVision(model_config=OPEN_CLIP_CFG, add_coords=True, coords_scale=10.0).eval()
    scaled.load_state_dict(openclip_enc.state_dict())
    with torch.no_grad():
        out10 = scaled(x)
    assert torch.equal(out10[..., :-2], plain) and torch.equal(out10[..., -2:], 10.0 * out[..., -2:])
    with pytest.raises(ValueError, match="coords_scale must be > 0, got 0"):
        OpenCLIPVision(model_config=OPEN_CLIP_CFG, add_coords=True, coords_scale=0)


def test_openclip_keeps_only_visual_tower(openclip_enc):
    assert all(k.startswith("model.") for k in openclip_enc.state_dict())
    assert not any("token_embedding" in k for k in openclip_enc.state_dict())


def test_openclip_checkpoint_roundtrip(tmp_path):
    import open_clip

    clip = open_clip.CLIP(**OPEN_CLIP_CFG).eval()
    path = tmp_path / "clip.pt"
    torch.save(clip.state_dict(), path)
    enc = OpenCLIPVision(model_config=OPEN_CLIP_CFG, pretrained=str(path)).eval()
    x = _x(enc)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), _openclip_manual(clip.visual, x, 2), rtol=0, atol=0)


def test_openclip_final_norm_gives_open_clips_output_tokens(tmp_path):
    """OpenFlamingo's resampler reads open_clip's `output_tokens` (after ln_post), not the last block's raw tokens."""
    import open_clip

    torch.manual_seed(0)
    clip = open_clip.CLIP(**OPEN_CLIP_CFG).eval()
    with torch.no_grad():  # a trained ln_post, not the identity it is at init
        clip.visual.ln_post.weight.normal_(1.0, 0.5)
        clip.visual.ln_post.bias.normal_()
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    clip.visual.output_tokens = True
    normed, raw = (OpenCLIPVision(model_config=OPEN_CLIP_CFG, pretrained=str(tmp_path / "clip.pt"), select_layer=-1,
                                  final_norm=norm).eval() for norm in (True, False))
    x = _x(normed, 3)
    with torch.no_grad():
        _, tokens = clip.visual(x)
        out, unnormed = normed(x), raw(x)
    assert out.shape == tokens.shape == (3, 16, 32)
    torch.testing.assert_close(out, tokens, rtol=0, atol=1e-6)
    torch.testing.assert_close(unnormed, _openclip_manual(clip.visual, x, 3), rtol=0, atol=1e-6)
    assert (unnormed - tokens).abs().max() > 0.5
    pooled_first = {**OPEN_CLIP_CFG, "vision_cfg": {**OPEN_CLIP_CFG["vision_cfg"], "final_ln_after_pool": True}}
    with pytest.raises(ValueError, match="pools before its final LayerNorm"):
        OpenCLIPVision(model_config=pooled_first, select_layer=-1, final_norm=True)


def test_openclip_missing_checkpoint(tmp_path):
    missing = str(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        OpenCLIPVision(model_config=OPEN_CLIP_CFG, pretrained=missing)


def test_openclip_pretrained_tag_offline():
    with pytest.raises(FileNotFoundError, match=r"ViT-B-32.*openai.*could not be found"):
        OpenCLIPVision(model_name="ViT-B-32", pretrained="openai")


def test_openclip_needs_exactly_one_source():
    with pytest.raises(ValueError, match="exactly one"):
        OpenCLIPVision()
    with pytest.raises(ValueError, match="exactly one"):
        OpenCLIPVision(model_name="ViT-B-32", model_config=OPEN_CLIP_CFG)
    with pytest.raises(ValueError, match="missing keys"):
        OpenCLIPVision(model_config={"vision_cfg": {}})


# ---------------------------------------------------------------------------
# Hugging Face
# ---------------------------------------------------------------------------


def _hf_pair(model_type: str, select_layer: int, final_norm: bool = False, seed: int = 0):
    """Our tower and the whole transformers tower with the same weights (loaded strictly into ours:
    the parts it dropped are ignored), post-norm and pooling head made non-trivial."""
    torch.manual_seed(seed)
    config_cls, model_cls, _ = _hf_classes(model_type)
    full = model_cls(config_cls(**HF_CFG)).eval()
    with torch.no_grad():
        full.post_layernorm.weight.normal_(1.0, 0.5)
        full.post_layernorm.bias.normal_()
    enc = HFVision(config=HF_CFG, model_type=model_type, select_layer=select_layer, final_norm=final_norm).eval()
    enc.load_state_dict({f"model.{k}": v for k, v in full.state_dict().items()})
    return enc, full


def test_hf_clip_features_equal_hidden_states(hf_enc):
    enc = hf_enc
    assert (enc.image_size, enc.num_patches, enc.dim) == (32, 16, 32)
    assert enc.mean == pytest.approx(OPENAI_MEAN) and enc.std == pytest.approx(OPENAI_STD)


@pytest.mark.parametrize("model_type", ["clip", "siglip"])
@pytest.mark.parametrize("select_layer", [-1, -2, 0, 1])
def test_hf_features_equal_the_whole_towers_hidden_states(model_type, select_layer):
    enc, full = _hf_pair(model_type, select_layer)
    prefix = 1 if model_type == "clip" else 0  # CLIP's CLS dropped; SigLIP has none
    x = _x(enc, 3)
    with torch.no_grad():
        out = enc(x)
        hidden = full(pixel_values=x, output_hidden_states=True).hidden_states
    assert out.shape == (3, 16, 32)
    assert torch.equal(out, hidden[select_layer][:, prefix:])
    other = hidden[select_layer - 1 if select_layer != 0 else 1][:, prefix:]
    assert not torch.allclose(out, other)


def test_hf_final_norm_gives_siglips_last_hidden_state_and_clips_normed_tokens():
    for model_type in ("clip", "siglip"):
        enc, full = _hf_pair(model_type, -1, final_norm=True)
        x = _x(enc)
        with torch.no_grad():
            out = full(pixel_values=x, output_hidden_states=True)
            if model_type == "siglip":  # SigLIP's post-norm applies to every token
                ref = out.last_hidden_state
            else:  # CLIP's to the pooled CLS only; the tokens normed as open_clip's output_tokens are
                ref = full.post_layernorm(out.hidden_states[-1])[:, 1:]
            assert torch.equal(enc(x), ref)
            assert (enc(x) - out.hidden_states[-1][:, 1 if model_type == "clip" else 0:]).abs().max() > 0.5


@pytest.mark.parametrize("model_type", ["clip", "siglip"])
@pytest.mark.parametrize("select_layer", [-1, -2])
def test_hf_runs_and_keeps_only_the_blocks_up_to_select_layer(model_type, select_layer):
    """Every module call counted with forward hooks: only `depth` blocks run, never the post-norm or
    SigLIP's pooling head; those parts hold no weights either."""
    enc, full = _hf_pair(model_type, select_layer)
    depth = HF_CFG["num_hidden_layers"] + 1 + select_layer
    calls: list[str] = []
    names = {m: n for n, m in enc.named_modules()}
    handles = [m.register_forward_hook(lambda m, i, o: calls.append(names[m])) for m in enc.modules()]
    with torch.no_grad():
        enc(_x(enc))
    for h in handles:
        h.remove()
    blocks = [n for n in calls if n.startswith("model.encoder.layers.") and n.count(".") == 3]
    assert blocks == [f"model.encoder.layers.{i}" for i in range(depth)]
    assert not any("post_layernorm" in n or ".head" in n for n in calls)
    assert len(enc.model.encoder.layers) == depth
    kept = {k for k in enc.state_dict()}
    whole = {f"model.{k}" for k in full.state_dict()}
    dropped = {k for k in whole - kept}
    assert kept < whole and all(k.startswith(("model.post_layernorm.", "model.head.", "model.encoder.layers.2."))
                                for k in dropped)
    assert any(k.startswith("model.post_layernorm.") for k in dropped)
    assert any(k.startswith("model.head.") for k in dropped) == (model_type == "siglip")
    assert any(k.startswith("model.encoder.layers.2.") for k in dropped) == (select_layer == -2)
    n_params = sum(p.numel() for p in enc.parameters())
    assert n_params == sum(v.numel() for k, v in full.state_dict().items() if f"model.{k}" in kept
                           and "position_ids" not in k)


def test_hf_checkpoints_of_the_truncated_tower_load_strictly(tmp_path):
    enc, _ = _hf_pair("clip", -2)
    torch.save(enc.state_dict(), tmp_path / "tower.pt")
    again = HFVision(config=HF_CFG, select_layer=-2).eval()
    again.load_state_dict(torch.load(tmp_path / "tower.pt", weights_only=True))  # strict
    x = _x(enc)
    with torch.no_grad():
        assert torch.equal(again(x), enc(x))
    deeper = HFVision(config=HF_CFG, select_layer=-1)
    with pytest.raises(RuntimeError, match="Missing key.*encoder.layers.2"):
        deeper.load_state_dict(enc.state_dict())  # a block it runs has no weights: still an error


def test_hf_select_layer_out_of_range():
    with pytest.raises(ValueError, match="select_layer"):
        HFVision(config=HF_CFG, select_layer=4)


def test_hf_siglip_keeps_all_tokens():
    enc = HFVision(config=HF_CFG, model_type="siglip").eval()
    assert (enc.num_patches, enc.dim) == (16, 32)
    assert enc.mean == pytest.approx((0.5,) * 3) and enc.std == pytest.approx((0.5,) * 3)


@pytest.mark.parametrize("model_type", ["clip", "siglip"])
def test_hf_save_pretrained_roundtrip(tmp_path, model_type):
    enc = HFVision(config=HF_CFG, model_type=model_type).eval()
    enc.save_pretrained(str(tmp_path))
    loaded = HFVision(name_or_path=str(tmp_path), model_type=model_type).eval()
    assert (loaded.dim, loaded.num_patches, loaded.image_size) == (enc.dim, enc.num_patches, 32)
    assert (loaded.mean, loaded.std) == (enc.mean, enc.std)
    x = _x(enc)
    with torch.no_grad():
        assert torch.equal(enc(x), loaded(x))


def test_hf_loads_vision_tower_of_full_clip_checkpoint(tmp_path):
    """Hub CLIP repos (e.g. openai/clip-vit-large-patch14-336) hold the full CLIPModel."""
    from transformers import CLIPConfig, CLIPModel

    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                vocab_size=64, max_position_embeddings=16, bos_token_id=0, eos_token_id=1)
    full = CLIPModel(CLIPConfig(vision_config=HF_CFG, text_config=text, projection_dim=16)).eval()
    full.save_pretrained(str(tmp_path))
    enc = HFVision(name_or_path=str(tmp_path)).eval()
    x = _x(enc)
    with torch.no_grad():
        ref = full.vision_model(x, output_hidden_states=True).hidden_states[-2][:, 1:]
        assert torch.equal(enc(x), ref)


def test_hf_rejects_checkpoint_of_other_type(tmp_path):
    HFVision(config=HF_CFG, model_type="siglip").save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="siglip_vision_model"):
        HFVision(name_or_path=str(tmp_path), model_type="clip")


def test_hf_unknown_hub_id_offline():
    with pytest.raises(FileNotFoundError, match=r"no-such-org/no-such-vit.*offline"):
        HFVision(name_or_path="no-such-org/no-such-vit")


def test_hf_needs_exactly_one_source():
    with pytest.raises(ValueError, match="exactly one"):
        HFVision()
    with pytest.raises(ValueError, match="model_type"):
        HFVision(config=HF_CFG, model_type="dino")


# ---------------------------------------------------------------------------
# timm
# ---------------------------------------------------------------------------


def test_timm_resnet_grid(resnet_enc):
    enc = resnet_enc
    assert (enc.image_size, enc.num_patches, enc.dim) == (75, 25, 64)  # layer3: 5x5x64
    x = _x(enc, 3)
    with torch.no_grad():
        out = enc(x)
        maps = enc.model.forward_intermediates(x, indices=[3], intermediates_only=True)[0]
    assert out.shape == (3, 25, 64)
    # token t is grid cell (t // 5, t % 5)
    assert torch.equal(out[:, 7], maps[:, :, 1, 2])
    assert torch.equal(out, maps.flatten(2).transpose(1, 2))


def test_timm_select_layer_changes_features(resnet_enc):
    last = TimmVision("resnet10t", model_kwargs=RESNET_KW, image_size=75, select_layer=-1)
    assert (last.num_patches, last.dim) == (9, 128)  # layer4: 3x3x128


def test_timm_add_coords_values():
    enc = TimmVision(
        "resnet10t", model_kwargs=RESNET_KW, image_size=75, select_layer=-2, add_coords=True
    ).eval()
    assert (enc.num_patches, enc.dim) == (25, 66)
    x = _x(enc)
    with torch.no_grad():
        out = enc(x)
    coords = out[..., -2:].reshape(2, 5, 5, 2)  # (B, row, col, xy)
    xs, ys = coords[..., 0], coords[..., 1]
    assert torch.equal(xs[:, :, 0], torch.full((2, 5), -1.0))  # left column
    assert torch.equal(xs[:, :, -1], torch.full((2, 5), 1.0))  # right column
    assert torch.equal(ys[:, 0, :], torch.full((2, 5), -1.0))  # top row
    assert torch.equal(ys[:, -1, :], torch.full((2, 5), 1.0))  # bottom row
    expected = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0])
    assert torch.equal(xs[0, 2], expected) and torch.equal(ys[0, :, 2], expected)
    assert torch.equal(grid_coords(1, 3), torch.tensor([[-1.0, 0.0], [0.0, 0.0], [1.0, 0.0]]))


def test_timm_vit(vit_enc):
    enc = vit_enc
    assert (enc.image_size, enc.num_patches, enc.dim) == (32, 16, 32)  # prefix (CLS) dropped
    x = _x(enc)
    model = enc.model
    with torch.no_grad():
        out = enc(x)
        # by hand: embed, run both blocks, drop the class token
        t = model.norm_pre(model._pos_embed(model.patch_embed(x)))
        t = model.blocks(t)[:, model.num_prefix_tokens:]
        penult = TimmVision("vit_tiny_patch16_224", model_kwargs=VIT_KW, select_layer=-2).eval()
        penult.load_state_dict(enc.state_dict())
        assert not torch.allclose(penult(x), out)
    torch.testing.assert_close(out, t, rtol=0, atol=1e-6)


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_timm_checkpoint_roundtrip(tmp_path, resnet_enc, fmt):
    path = tmp_path / f"resnet.{fmt}"
    state = resnet_enc.model.state_dict()
    if fmt == "pth":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    torch.manual_seed(123)
    loaded = TimmVision(
        "resnet10t", model_kwargs=RESNET_KW, image_size=75, select_layer=-2, checkpoint_path=str(path)
    ).eval()
    x = _x(loaded)
    with torch.no_grad():
        assert torch.equal(loaded(x), resnet_enc(x))


def test_timm_missing_checkpoint(tmp_path):
    missing = str(tmp_path / "weights.pth")
    with pytest.raises(FileNotFoundError, match="weights.pth"):
        TimmVision("resnet10t", model_kwargs=RESNET_KW, checkpoint_path=missing)


def test_timm_pretrained_offline():
    with pytest.raises(FileNotFoundError, match=r"resnet10t.*could not be found"):
        TimmVision("resnet10t", pretrained=True, model_kwargs=RESNET_KW)


def test_timm_bad_image_size_for_vit():
    # a ViT built for 32px cannot take 48px: caught at construction, with the sizes
    with pytest.raises(ValueError, match="image_size=48"):
        TimmVision("vit_tiny_patch16_224", model_kwargs=VIT_KW, image_size=48)


# ---------------------------------------------------------------------------
# Common interface
# ---------------------------------------------------------------------------

ENCODERS = ["openclip_enc", "hf_enc", "resnet_enc", "vit_enc"]


@pytest.mark.parametrize("name", ENCODERS)
def test_wrong_image_size_raises(request, name):
    enc = request.getfixturevalue(name)
    s = enc.image_size
    with pytest.raises(ValueError, match=rf"image_size={s}.*got \(2, 3, {s + 8}, {s + 8}\)"):
        enc(torch.randn(2, 3, s + 8, s + 8))
    with pytest.raises(ValueError, match="got"):
        enc(torch.randn(3, s, s))


@pytest.mark.parametrize("name", ENCODERS)
def test_transform_resizes_and_normalises(request, name):
    enc = request.getfixturevalue(name)
    s = enc.image_size
    tf = enc.transform(train=True)
    assert isinstance(tf, ImageTransform)
    rgb = (200, 100, 50)
    out = tf(PIL.Image.new("RGB", (57, 41), rgb))
    assert out.shape == (3, s, s) and out.dtype == torch.float32
    for c in range(3):
        expected = (rgb[c] / 255 - enc.mean[c]) / enc.std[c]
        torch.testing.assert_close(out[c], torch.full((s, s), expected), rtol=0, atol=1e-5)
    # usable as model input
    with torch.no_grad():
        assert enc(out[None]).shape == (1, enc.num_patches, enc.dim)


def test_transform_is_picklable_and_keeps_layout():
    tf = ImageTransform(16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    tf = pickle.loads(pickle.dumps(tf))
    img = PIL.Image.new("L", (80, 40), 0)  # greyscale, wide: left half white
    img.paste(255, (0, 0, 40, 40))
    out = tf(img)
    assert out.shape == (3, 16, 16)
    assert torch.allclose(out[:, :, 0], torch.ones(3, 16))  # not cropped, not flipped
    assert torch.allclose(out[:, :, -1], torch.zeros(3, 16))


def test_instantiate_from_yaml():
    """Constructor type hints must let jsonargparse/LightningCLI build them from YAML."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--vision", type=VisionEncoder)
    cfg = parser.parse_string(
        """
vision:
  class_path: models.vision.TimmVision
  init_args:
    model_name: resnet10t
    image_size: 75
    select_layer: -2
    add_coords: true
    model_kwargs: {channels: [16, 32, 64, 128], stem_width: 16}
"""
    )
    enc = parser.instantiate(cfg).vision
    assert isinstance(enc, TimmVision) and (enc.num_patches, enc.dim) == (25, 66)

    cfg = parser.parse_object(
        {"vision": {"class_path": "models.vision.HFVision",
                    "init_args": {"config": HF_CFG, "model_type": "siglip"}}}
    )
    enc = parser.instantiate(cfg).vision
    assert isinstance(enc, HFVision) and enc.num_patches == 16


def test_select_layer_out_of_range_fails_at_construction():
    with pytest.raises(ValueError, match="select_layer=-4"):
        OpenCLIPVision(model_config=OPEN_CLIP_CFG, select_layer=-4)  # only 3 blocks
    with pytest.raises(ValueError, match="select_layer=5"):
        TimmVision("resnet10t", model_kwargs=RESNET_KW, image_size=75, select_layer=5)


@pytest.mark.parametrize("build", [lambda: HFVision(config=HF_CFG, model_type="clip"),
                                   lambda: HFVision(config=HF_CFG, model_type="siglip", final_norm=True),
                                   lambda: OpenCLIPVision(model_config=OPEN_CLIP_CFG, add_coords=True)],
                         ids=["hf-clip", "hf-siglip", "open_clip"])
def test_a_towers_forward_and_backward_make_no_host_sync(build):
    from train.host_syncs import HostSyncCounter

    enc = build()
    with HostSyncCounter() as counter:
        enc(_x(enc)).sum().backward()
    assert counter.total == 0, counter.by_op
    if isinstance(enc, HFVision):  # truncated: every weight it keeps is used (open_clip keeps its whole tower)
        assert all(p.grad is not None for p in enc.parameters())
