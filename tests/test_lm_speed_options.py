"""Speed options of LanguageModel (checkpointing granularity, compiled layers, attention backend)
change the cost of a step, never its result."""

import pytest
import torch

from models.language import LanguageModel, decoder_layers
from tests.tiny import LM_CONFIG, tiny_world

CONFIG = {**LM_CONFIG, "num_hidden_layers": 4}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return str(tiny_world(tmp_path_factory.mktemp("world")) / "tokenizer")


def _loss_and_grads(lm: LanguageModel):
    torch.manual_seed(1)
    embeds = torch.randn(2, 9, CONFIG["hidden_size"])
    lm.train()
    lm.zero_grad()
    logits = lm(embeds, torch.ones(2, 9, dtype=torch.long))
    loss = logits.logsumexp(-1).mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in lm.named_parameters() if p.grad is not None}


def _build(tokenizer, **kwargs) -> LanguageModel:
    torch.manual_seed(0)
    return LanguageModel(config=dict(CONFIG), tokenizer=tokenizer, **kwargs)


@pytest.mark.parametrize("kwargs", [{"gradient_checkpointing": True, "checkpoint_every": 2},
                                    {"gradient_checkpointing": True},
                                    {"compile_layers": "aot_eager"}])
def test_speed_options_keep_loss_and_gradients(tokenizer, kwargs):
    ref_loss, ref_grads = _loss_and_grads(_build(tokenizer))
    lm = _build(tokenizer, **kwargs)
    loss, grads = _loss_and_grads(lm)
    torch.testing.assert_close(loss, ref_loss)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-5, atol=1e-6, msg=name)


def test_checkpoint_every_selects_layers(tokenizer):
    lm = _build(tokenizer, gradient_checkpointing=True, checkpoint_every=2)
    assert [layer.gradient_checkpointing for layer in decoder_layers(lm.model)] == [True, False, True, False]


def test_flash_attention_without_package_is_a_clear_error(tokenizer):
    import importlib.util

    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed here")
    with pytest.raises(ValueError, match="flash-attn"):
        _build(tokenizer, attn_implementation="flash_attention_2")


def test_revision_reaches_the_loader(tokenizer, tmp_path):
    """A local directory has no revisions: transformers accepts and ignores it, a hub id is pinned."""
    _build(tokenizer).save_pretrained(tmp_path)
    lm = LanguageModel(name_or_path=str(tmp_path), revision="main")
    assert lm.model.config.num_hidden_layers == 4
    with pytest.raises(FileNotFoundError, match="chimera-missing/lm"):
        LanguageModel(name_or_path="chimera-missing/lm", revision="v1.0")


def test_a_frozen_lm_still_recomputes_its_checkpointed_layers(tmp_path):
    """The `align` stage freezes the LM (eval mode: no dropout) while gradients flow through it to the
    projector: with gradient checkpointing every layer must still run twice (forward, then recompute
    in the backward), or the memory it promises is not saved."""
    from tests.tiny import module_config
    from train.checkpoint import build_module

    world = tiny_world(tmp_path)
    cfg = module_config(world, stage="align")
    cfg["init_args"]["model"]["init_args"]["language"]["init_args"]["gradient_checkpointing"] = True
    module = build_module(cfg)
    module.train()
    lm = module.model.language
    calls = []
    for layer in decoder_layers(lm.model):
        layer.self_attn.register_forward_pre_hook(lambda *_: calls.append(1))  # the recompute may stop early
    assert not lm.training and all(not m.training for m in decoder_layers(lm.model)[0].modules()
                                   if m is not decoder_layers(lm.model)[0])
    image = lm.image_token_id
    ids = module.model.image_placeholders.widen(torch.tensor([1, image, 5, 6, 7]))[0][None]
    _, loss = module.model(ids, torch.ones_like(ids), torch.randn(1, 3, 75, 75), ids.clone())
    assert len(calls) == LM_CONFIG["num_hidden_layers"]
    loss.backward()
    assert len(calls) == 2 * LM_CONFIG["num_hidden_layers"]  # each layer recomputed once
    assert module.model.connector.parameters().__next__().grad is not None
    assert all(p.grad is None for p in lm.parameters())
