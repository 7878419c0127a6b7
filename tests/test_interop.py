"""Checkpoint interop: transformers LLaVA export/import and OpenFlamingo import, each proved by
equal logits between our model and the model in the other format (tiny, random weights)."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch

from data.tokenizer import train_tokenizer
from models.connectors import MLPConnector
from models.flamingo import Flamingo
from models.interop import chimera_to_openflamingo, import_hf_llava, load_openflamingo_checkpoint
from models.language import LanguageModel
from models.llava import LLaVA
from models.resampler import PerceiverResampler
from models.vision import HFVision
from tests.tiny import LM_CONFIG
from train.checkpoint import build_module, load_module
from train.cli import main

CLIP = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2,
        "image_size": 28, "patch_size": 7, "projection_dim": 16}  # 16 patches


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(["a cat on a mat", "what colour is the square"], out, vocab_size=300)
    return str(out)


def llava_config(tok: str) -> dict:
    return {"class_path": "train.module.VLMModule", "init_args": {"stage": "finetune", "model": {
        "class_path": "models.llava.LLaVA", "init_args": {
            "vision": {"class_path": "models.vision.HFVision", "init_args": {"config": dict(CLIP), "select_layer": -2}},
            "language": {"class_path": "models.language.LanguageModel",
                         "init_args": {"config": dict(LM_CONFIG), "tokenizer": tok}},
            "connector": {"class_path": "models.connectors.MLPConnector", "init_args": {"depth": 2}},
        }}}}


def batch(model, image_positions=(1, 3), length=7):
    """Two rows without padding, one `<image>` each at different positions, widened to its
    placeholders (the input both our LLaVA and transformers' take)."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 250, (2, length), generator=g)
    for row, pos in enumerate(image_positions):
        ids[row, pos] = model.language.image_token_id
    ids = torch.stack([model.image_placeholders.widen(row)[0] for row in ids])
    pixels = torch.randn(2, 3, CLIP["image_size"], CLIP["image_size"], generator=g)
    return ids, torch.ones_like(ids), pixels


@pytest.fixture(scope="module")
def exported(tok, tmp_path_factory):
    root = tmp_path_factory.mktemp("llava")
    torch.manual_seed(0)
    config = llava_config(tok)
    module = build_module(config).eval()
    ckpt = root / "tiny.ckpt"
    torch.save({"state_dict": module.state_dict(), "chimera_config": config}, ckpt)
    main(["export", "--ckpt", str(ckpt), "--format", "hf-llava", "--out", str(root / "hf")])
    return module.model, root


def test_hf_llava_export_has_equal_logits(exported):
    from transformers import LlavaForConditionalGeneration

    model, root = exported
    hf = LlavaForConditionalGeneration.from_pretrained(root / "hf").eval()
    assert hf.config.image_seq_length == model.num_image_tokens == 16
    ids, mask, pixels = batch(model)
    with torch.no_grad():
        ours, _ = model(ids, mask, pixels)
        theirs = hf(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
    assert theirs.shape == ours.shape
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


def test_hf_llava_processor_widens_image_tokens_like_our_collators(exported):
    import PIL.Image
    from transformers import AutoProcessor

    model, root = exported
    processor = AutoProcessor.from_pretrained(root / "hf")
    text = "<image>\nwhat colour"
    out = processor(text=text, images=PIL.Image.new("RGB", (40, 30)), return_tensors="pt")
    ours, _ = model.image_placeholders.widen(torch.tensor(model.tokenizer(text)["input_ids"]))
    assert out["input_ids"][0].tolist() == ours.tolist()
    assert int((ours == model.language.image_token_id).sum()) == model.num_image_tokens
    assert tuple(out["pixel_values"].shape[-2:]) == (CLIP["image_size"],) * 2


def test_hf_llava_import_round_trip(exported):
    model, root = exported
    imported = import_hf_llava(root / "hf")
    ids, mask, pixels = batch(model, image_positions=(0, 5))
    with torch.no_grad():
        torch.testing.assert_close(imported(ids, mask, pixels)[0], model(ids, mask, pixels)[0], atol=1e-6, rtol=1e-6)


def test_hf_llava_import_cli_writes_a_loadable_checkpoint(exported):
    model, root = exported
    main(["import", "--format", "hf-llava", "--src", str(root / "hf"), "--out", str(root / "back")])
    for part in ("vision", "language"):  # the checkpoint carries their architecture and tokenizer
        shutil.rmtree(root / "back" / part)
    module = load_module(root / "back" / "model.ckpt")
    ids, mask, pixels = batch(model)
    with torch.no_grad():
        torch.testing.assert_close(module.model(ids, mask, pixels)[0], model(ids, mask, pixels)[0])


def test_hf_llava_export_refuses_other_towers(tok, tmp_path):
    from models.interop import export_hf_llava

    model = LLaVA(HFVision(config=dict(CLIP)), LanguageModel(config=dict(LM_CONFIG), tokenizer=tok),
                  lambda i, o: MLPConnector(i, o, depth=3))
    with pytest.raises(ValueError, match="mlp2x_gelu"):
        export_hf_llava(model, tmp_path)


@pytest.fixture(scope="module", params=["pad", "crop"])
def exported_llava15(request, tok, tmp_path_factory):
    """A vicuna_v1 checkpoint whose tower pads (LLaVA-1.5) or crops, exported as hf-llava."""
    root = tmp_path_factory.mktemp(f"llava15-{request.param}")
    torch.manual_seed(0)
    config = llava_config(tok)
    config["init_args"]["template"] = {"name": "vicuna_v1"}
    config["init_args"]["model"]["init_args"]["vision"]["init_args"]["image_mode"] = request.param
    module = build_module(config).eval()
    ckpt = root / "tiny.ckpt"
    torch.save({"state_dict": module.state_dict(), "chimera_config": config}, ckpt)
    main(["export", "--ckpt", str(ckpt), "--format", "hf-llava", "--out", str(root / "hf")])
    return module, root


def non_square_image():
    import numpy as np
    import PIL.Image

    return PIL.Image.fromarray(np.random.default_rng(1).integers(0, 256, (31, 45, 3), dtype=np.uint8))


def test_hf_llava_processor_gives_our_pixels_exactly(exported, exported_llava15):
    from transformers import AutoProcessor

    for model, root in (exported, (exported_llava15[0].model, exported_llava15[1])):
        processor = AutoProcessor.from_pretrained(root / "hf", backend="pil")
        image = non_square_image()
        theirs = processor(text="<image>\nhi", images=image, return_tensors="pt")["pixel_values"][0]
        assert torch.equal(theirs, model.vision.transform(train=False)(image))


def test_hf_llava_chat_template_renders_our_prompt(exported_llava15):
    from transformers import AutoProcessor

    from data.tokenize import tokenize_prompt

    module, root = exported_llava15
    processor = AutoProcessor.from_pretrained(root / "hf", backend="pil")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour is the square"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    ours = module.template.prompt_text("what colour is the square")
    assert text == "<s>" + "".join(s.text for s in ours)  # this tokenizer adds no BOS itself: the template does
    assert text.startswith("<s>A chat between a curious user") and text.endswith(" ASSISTANT:")
    ids = processor(text=text, images=non_square_image(), return_tensors="pt")["input_ids"]
    our_ids = torch.tensor(tokenize_prompt("what colour is the square", module.model.tokenizer, module.template))
    assert torch.equal(ids[0], module.model.image_placeholders.widen(our_ids)[0])  # what our collators feed
    assert "backend=\"pil\"" in (root / "hf" / "README.md").read_text()


def test_hf_llava_import_keeps_template_and_image_mode(exported_llava15):
    from data.templates import ChatTemplate

    module, root = exported_llava15
    out = root / f"back-{module.model.vision.image_mode}"
    main(["import", "--format", "hf-llava", "--src", str(root / "hf"), "--out", str(out)])
    back = load_module(out / "model.ckpt")
    assert back.template == ChatTemplate.named("vicuna_v1")
    assert back.model.vision.image_mode == module.model.vision.image_mode
    assert back.model.vision.mean == module.model.vision.mean
    image = non_square_image()
    assert torch.equal(back.model.vision.transform()(image), module.model.vision.transform()(image))


def test_hf_llava_import_template_follows_the_source_chat_template(exported, tmp_path):
    from tests.offline_tokenizers import CHATML

    _, root = exported
    chatml, bare = tmp_path / "chatml", tmp_path / "bare"
    shutil.copytree(root / "hf", chatml)
    (chatml / "chat_template.jinja").write_text(CHATML)  # another chat format: used as it is
    main(["import", "--format", "hf-llava", "--src", str(chatml), "--out", str(tmp_path / "a")])
    module = load_module(tmp_path / "a" / "model.ckpt")
    assert module.template.name == "chat_template"
    assert module.model.tokenizer.chat_template == CHATML
    shutil.copytree(root / "hf", bare)
    (bare / "chat_template.jinja").unlink()  # none at all: LLaVA-1.5's own format
    main(["import", "--format", "hf-llava", "--src", str(bare), "--out", str(tmp_path / "b")])
    assert load_module(tmp_path / "b" / "model.ckpt").template.name == "vicuna_v1"


# --- OpenFlamingo ---------------------------------------------------------------------------

def tiny_flamingo(tok: str, seed: int, **resampler_kw) -> Flamingo:
    torch.manual_seed(seed)
    lm = LanguageModel(config={**LM_CONFIG, "num_hidden_layers": 4}, tokenizer=tok)
    model = Flamingo(HFVision(config=dict(CLIP), select_layer=-1), lm,
                     resampler=lambda i, o: PerceiverResampler(i, o, num_latents=4, depth=2, heads=2, dim_head=8,
                                                               **resampler_kw),
                     cross_attn_every_n_layers=2, xattn_heads=2, xattn_dim_head=8, xattn_ff_mult=2).eval()
    with torch.no_grad():  # everything non-trivial: open gates, non-zero special-token deltas
        for block in model.cross_attention:
            block.attn_gate.fill_(0.7)
            block.ff_gate.fill_(-0.4)
        model.special_tokens.input_delta.normal_()
        model.special_tokens.output_delta.normal_()
    return model


def flamingo_batch(model):
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(5, 250, (2, 9), generator=g)
    img, eoc = model.image_token_id, model.end_of_chunk_token_id
    ids[0, [0, 4]] = img
    ids[0, 3] = eoc
    ids[1, 2] = img
    pixels = torch.randn(3, 3, CLIP["image_size"], CLIP["image_size"], generator=g)
    return ids, torch.ones_like(ids), pixels


def test_openflamingo_names(tok):
    state = chimera_to_openflamingo(tiny_flamingo(tok, 0))
    for key in ("perceiver.latents", "perceiver.layers.0.0.to_kv.weight", "perceiver.layers.1.1.3.weight",
                "perceiver.norm.weight",
                "lang_encoder.model.layers.1.gated_cross_attn_layer.attn.to_q.weight",
                "lang_encoder.model.layers.1.gated_cross_attn_layer.attn_gate",
                "lang_encoder.model.layers.3.gated_cross_attn_layer.ff.1.weight",
                "lang_encoder.model.layers.0.decoder_layer.self_attn.q_proj.weight",
                "lang_encoder.model.layers.1.decoder_layer.mlp.down_proj.weight",
                "lang_encoder.model.embed_tokens.weight", "lang_encoder.lm_head.weight"):
        assert key in state, key
    assert not any("gated_cross_attn_layer" in k for k in state if ".layers.0." in k or ".layers.2." in k)
    assert any(k.startswith("vision_encoder.") and k.endswith("patch_embedding.weight") for k in state)


def test_openflamingo_checkpoint_import_gives_identical_outputs(tok, tmp_path):
    source = tiny_flamingo(tok, 0)
    path = tmp_path / "checkpoint.pt"
    torch.save({"module." + k: v for k, v in chimera_to_openflamingo(source).items()}, path)  # DDP-prefixed, too
    target = tiny_flamingo(tok, 1)
    ids, mask, pixels = flamingo_batch(source)
    with torch.no_grad():
        before = target(ids, mask, pixels)[0]
        assert load_openflamingo_checkpoint(target, path) == []
        expected, got = source(ids, mask, pixels)[0], target(ids, mask, pixels)[0]
    assert not torch.allclose(before, expected)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not target.special_tokens.input_delta.any()  # folded into the embedding rows


def test_openflamingo_trainable_only_checkpoint(tok):
    """Released checkpoint.pt files hold only what trained; vision and LM stay as built."""
    source = tiny_flamingo(tok, 0)
    state = chimera_to_openflamingo(source, trainable_only=True)
    assert {k.split(".")[0] for k in state} == {"perceiver", "lang_encoder"}
    assert all("gated_cross_attn_layer" in k or k in ("lang_encoder.model.embed_tokens.weight", "lang_encoder.lm_head.weight")
               for k in state if k.startswith("lang_encoder."))
    target = copy.deepcopy(source)
    with torch.no_grad():
        for p in [*target.connector.parameters(), *target.cross_attention.parameters()]:
            p.add_(1.0)
    missing = load_openflamingo_checkpoint(target, state)
    assert missing and not any(k.startswith(("connector.", "cross_attention.")) for k in missing)
    ids, mask, pixels = flamingo_batch(source)
    with torch.no_grad():
        torch.testing.assert_close(target(ids, mask, pixels)[0], source(ids, mask, pixels)[0], atol=1e-5, rtol=1e-5)


def test_openflamingo_time_embeddings_have_its_shapes_and_load(tok):
    """open_flamingo's perceiver holds frame_embs (F, D) and media_time_embs (T, 1, D)."""
    source = tiny_flamingo(tok, 0, max_num_media=2, max_num_frames=3)
    state = chimera_to_openflamingo(source)
    dim = source.vision.dim
    assert state["perceiver.frame_embs"].shape == (3, dim)
    assert state["perceiver.media_time_embs"].shape == (2, 1, dim)
    target = tiny_flamingo(tok, 1, max_num_media=2, max_num_frames=3)
    assert load_openflamingo_checkpoint(target, state) == []
    for name in ("frame_embs", "media_time_embs"):
        assert torch.equal(getattr(target.connector, name), getattr(source.connector, name))
    ids, mask, pixels = flamingo_batch(source)  # a row with two images: the second uses media_time_embs[1]
    with torch.no_grad():
        torch.testing.assert_close(target(ids, mask, pixels)[0], source(ids, mask, pixels)[0], atol=1e-5, rtol=1e-5)


def test_openflamingo_mismatched_layout_is_a_clear_error(tok):
    state = chimera_to_openflamingo(tiny_flamingo(tok, 0))
    other = tiny_flamingo(tok, 0)
    state["lang_encoder.model.layers.0.gated_cross_attn_layer.attn_gate"] = torch.zeros(1)
    with pytest.raises(ValueError, match="cross_attn_every_n_layers"):
        load_openflamingo_checkpoint(other, state)


def test_openflamingo_import_cli(tok, tmp_path):
    """`chimera import --format openflamingo` builds the experiment's Flamingo and loads checkpoint.pt into it."""
    import yaml

    config = {"class_path": "train.module.VLMModule", "init_args": {"stage": "align", "model": {
        "class_path": "models.flamingo.Flamingo", "init_args": {
            "vision": {"class_path": "models.vision.HFVision", "init_args": {"config": dict(CLIP), "select_layer": -1}},
            "language": {"class_path": "models.language.LanguageModel",
                         "init_args": {"config": {**LM_CONFIG, "num_hidden_layers": 4}, "tokenizer": tok}},
            "resampler": {"class_path": "models.resampler.PerceiverResampler",
                          "init_args": {"num_latents": 4, "depth": 1, "heads": 2, "dim_head": 8}},
            "cross_attn_every_n_layers": 2, "xattn_heads": 2, "xattn_dim_head": 8, "xattn_ff_mult": 2,
        }}}}
    torch.manual_seed(0)
    source = build_module(config).model.eval()
    with torch.no_grad():
        for block in source.cross_attention:
            block.attn_gate.fill_(0.5)
    torch.save(chimera_to_openflamingo(source), tmp_path / "checkpoint.pt")
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump({"model": config}))
    main(["import", "--format", "openflamingo", "--src", str(tmp_path / "checkpoint.pt"),
          "--config", str(tmp_path / "exp.yaml"), "--out", str(tmp_path / "out")])
    imported = load_module(tmp_path / "out" / "model.ckpt").model
    ids, mask, pixels = flamingo_batch(source)
    with torch.no_grad():
        torch.testing.assert_close(imported(ids, mask, pixels)[0], source(ids, mask, pixels)[0], atol=1e-5, rtol=1e-5)
