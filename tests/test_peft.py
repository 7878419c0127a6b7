"""PEFT on the language model: LoRA / QLoRA / LLaMA-Adapter / bottleneck adapters, by value."""

import bitsandbytes as bnb
import pytest
import torch
import torch.nn.functional as F
from jsonargparse import ArgumentParser
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import LlamaForCausalLM

from models.language import LanguageModel
from models.peft import Adapter, Bottleneck, LlamaAdapter, LoRA, build_optimizer
from tests.tiny import LM_CONFIG, tiny_world


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return str(tiny_world(tmp_path_factory.mktemp("world")) / "tokenizer")


def _lm(tok, seed=0, **kwargs):
    torch.manual_seed(seed)
    return LanguageModel(config=LM_CONFIG, tokenizer=tok, **kwargs)


def _ids(lm, n=2, length=12):
    g = torch.Generator().manual_seed(1)
    return torch.randint(3, len(lm.tokenizer), (n, length), generator=g)


def _logits(lm, ids):
    with torch.no_grad():
        return lm(lm.embed(ids))


def _loss(lm, ids):
    logits = lm(lm.embed(ids))
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())


def _randomize(params):
    with torch.no_grad():
        for p in params:
            p.normal_(0, 0.2)


def _trainable(lm):
    return {id(p) for p in lm.parameters() if p.requires_grad}


def test_lora_trains_exactly_its_low_rank_factors_and_starts_at_the_base(tok):
    base, lm = _lm(tok), _lm(tok, adapter=LoRA(r=8))
    h, i, heads, kv = (LM_CONFIG[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads",
                                              "num_key_value_heads"))
    kv_out = kv * h // heads
    shapes = [(h, h), (h, kv_out), (h, kv_out), (h, h), (h, i), (h, i), (i, h)]  # q k v o gate up down
    expected = LM_CONFIG["num_hidden_layers"] * sum(8 * (fan_in + fan_out) for fan_in, fan_out in shapes)
    assert sum(p.numel() for p in lm.parameters() if p.requires_grad) == expected
    assert _trainable(lm) == {id(p) for p in lm.adapter_parameters()}
    head = lm.model.get_output_embeddings()
    assert not isinstance(head, LoraLayer) and type(head) is nn.Linear
    ids = _ids(lm)
    torch.testing.assert_close(_logits(lm.eval(), ids), _logits(base.eval(), ids), rtol=0, atol=0)


@pytest.mark.parametrize("spec,expected", [
    (Bottleneck(), 2 * 2 * (32 * 8 + 8 + 8 * 32 + 32)),  # layers x (attn, mlp) x (down + up)
    (LlamaAdapter(adapter_len=4, adapter_layers=2), 2 * (4 * 32 + 1)),  # prompts + gate per layer
])
def test_zero_init_adapters_start_at_the_base_and_train_alone(tok, spec, expected):
    base, lm = _lm(tok), _lm(tok, adapter=spec)
    assert sum(p.numel() for p in lm.parameters() if p.requires_grad) == expected
    assert _trainable(lm) == {id(p) for p in lm.adapter_parameters()}
    ids = _ids(lm)
    torch.testing.assert_close(_logits(lm.eval(), ids), _logits(base.eval(), ids), rtol=0, atol=0)
    lm.requires_grad_(True)
    lm.requires_grad_(False)
    lm.mark_adapter_trainable()  # what the training stage calls
    assert _trainable(lm) == {id(p) for p in lm.adapter_parameters()}
    _loss(lm.train(), ids).backward()
    assert all(p.grad is not None for p in lm.adapter_parameters())


def test_qlora_base_is_nf4_double_quant_and_paged_adamw_learns(tok):
    lm = _lm(tok, adapter=LoRA(r=8, dropout=0.0), quantization="nf4")
    layers = [m for m in lm.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 7 * LM_CONFIG["num_hidden_layers"]
    for m in layers:
        assert m.weight.quant_state.quant_type == "nf4" and m.weight.quant_state.nested
        assert not m.weight.requires_grad
    assert not isinstance(lm.model.get_output_embeddings(), bnb.nn.Linear4bit)
    assert _trainable(lm) == {id(p) for p in lm.adapter_parameters()}
    ids = _ids(lm, n=4, length=16)
    opt = build_optimizer("paged_adamw", lm.adapter_parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        loss = _loss(lm.train(), ids)
        opt.zero_grad(); loss.backward(); opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses


def test_lora_merge_equals_adapter_and_saves_a_plain_dense_model(tok, tmp_path):
    lm = _lm(tok, adapter=LoRA(r=4)).eval()
    _randomize([p for m in lm.model.modules() if isinstance(m, LoraLayer) for p in m.lora_B.parameters()])
    ids = _ids(lm)
    before = _logits(lm, ids)
    lm.save_pretrained(tmp_path / "merged", merged=True)
    assert lm.adapter is None and type(lm.model) is LlamaForCausalLM
    assert not any(isinstance(m, LoraLayer) for m in lm.model.modules())
    torch.testing.assert_close(_logits(lm, ids), before, rtol=0, atol=1e-5)
    back = LanguageModel(name_or_path=str(tmp_path / "merged"))
    torch.testing.assert_close(_logits(back.eval(), ids), before, rtol=0, atol=1e-5)


def test_qlora_merge_dequantizes_to_a_dense_model(tok, tmp_path):
    """The merged weight is exactly dequant(W4) + BA in fp32, which is what bnb computes with (it
    dequantises and runs a dense matmul), so the only difference is matmul rounding: measured
    ~1e-6 on these logits; 1e-5 leaves room across BLAS builds."""
    lm = _lm(tok, adapter=LoRA(r=4), quantization="nf4").eval()
    _randomize([p for m in lm.model.modules() if isinstance(m, LoraLayer) for p in m.lora_B.parameters()])
    ids = _ids(lm)
    before = _logits(lm, ids)
    lm.merge_adapter()
    assert not any(isinstance(m, (bnb.nn.Linear4bit, LoraLayer)) for m in lm.model.modules())
    assert getattr(lm.model.config, "quantization_config", None) is None
    torch.testing.assert_close(_logits(lm, ids), before, rtol=0, atol=1e-5)
    lm.save_pretrained(tmp_path / "dense")
    back = LanguageModel(name_or_path=str(tmp_path / "dense"))
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in back.model.modules())
    torch.testing.assert_close(_logits(back.eval(), ids), before, rtol=0, atol=1e-5)


def test_llama_adapter_refuses_to_merge(tok):
    with pytest.raises(ValueError, match="cannot be folded"):
        _lm(tok, adapter=LlamaAdapter(adapter_len=2, adapter_layers=1)).merge_adapter()


@pytest.mark.parametrize("spec,quant", [(LoRA(r=4), None), (LoRA(r=4), "nf4"),
                                        (LlamaAdapter(adapter_len=3, adapter_layers=2), None), (Bottleneck(), None)])
def test_state_dict_round_trip_gives_identical_logits(tok, spec, quant):
    lm = _lm(tok, adapter=spec, quantization=quant).eval()
    _randomize(lm.adapter_parameters())
    clone = _lm(tok, seed=123, adapter=spec, quantization=quant).eval()  # another base and adapter init
    ids = _ids(lm)
    assert not torch.equal(_logits(clone, ids), _logits(lm, ids))
    clone.load_state_dict(lm.state_dict())
    torch.testing.assert_close(_logits(clone, ids), _logits(lm, ids), rtol=0, atol=0)


@pytest.mark.parametrize("spec,quant", [(LoRA(r=4), "nf4"), (Bottleneck(), None)])
def test_save_pretrained_keeps_the_base_and_the_adapter_apart(tok, tmp_path, spec, quant):
    lm = _lm(tok, adapter=spec, quantization=quant).eval()
    base = _lm(tok, quantization=quant).eval()
    _randomize(lm.adapter_parameters())
    lm.save_pretrained(tmp_path / "lm")
    assert (tmp_path / "lm" / "adapter").is_dir()
    back = LanguageModel(name_or_path=str(tmp_path / "lm")).eval()  # the base alone, original names
    ids = _ids(lm)
    torch.testing.assert_close(_logits(back, ids), _logits(base, ids), rtol=0, atol=0)


def test_gradient_checkpointing_gives_the_same_loss_and_grads(tok):
    off, on = (_lm(tok, adapter=LoRA(r=4, dropout=0.0), gradient_checkpointing=gc).train() for gc in (False, True))
    _randomize(off.adapter_parameters())
    on.load_state_dict(off.state_dict())
    assert on.model.get_base_model().is_activation_checkpointing
    ids = _ids(off)
    losses = []
    for lm in (off, on):
        loss = _loss(lm, ids)
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=1e-6)
    for a, b in zip(off.adapter_parameters(), on.adapter_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)


def test_fused_adamw_takes_the_same_steps():
    params = [nn.Parameter(torch.randn(16, 8)) for _ in range(2)]
    for name in ("adamw", "adamw_fused"):
        torch.manual_seed(0)
        p = nn.Parameter(torch.randn(16, 8))
        opt = build_optimizer(name, [{"params": [p], "weight_decay": 0.1}], lr=1e-2)
        for _ in range(3):
            opt.zero_grad(); (p.sin() ** 2).sum().backward(); opt.step()
        params[name == "adamw_fused"] = p
    assert opt.defaults["fused"]
    torch.testing.assert_close(params[1], params[0], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["adamw", "adamw_fused", "paged_adamw", "paged_adamw_8bit", "adamw_8bit"])
def test_optimizers_step_on_cpu(name):
    p = nn.Parameter(torch.randn(64, 128))  # >= 4096 elements, so 8-bit variants really use 8-bit state
    start = p.detach().clone()
    opt = build_optimizer(name, [{"params": [p], "weight_decay": 0.0}], lr=1e-2, betas=(0.9, 0.99))
    for _ in range(3):
        opt.zero_grad(); (p ** 2).sum().backward(); opt.step()
    assert p.norm() < start.norm()  # descends on |p|^2


def test_adapter_is_typed_config():
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--adapter", type=Adapter | None, default=None)
    cfg = parser.parse_args(["--adapter", '{"class_path": "models.peft.LoRA", "init_args": {"r": 4}}'])
    assert parser.instantiate(cfg).adapter == LoRA(r=4)
    with pytest.raises(Exception, match="rank"):
        parser.parse_args(["--adapter", '{"class_path": "models.peft.LoRA", "init_args": {"rank": 4}}'])


@pytest.mark.parametrize("spec,quant", [(LlamaAdapter(adapter_len=3), None), (LoRA(r=4), "nf4")])
def test_generate_with_kv_cache_matches_recompute(tok, spec, quant):
    """Adaption prompts recompute queries with the cache's rotary positions; a 4-bit base decodes too."""
    lm = _lm(tok, adapter=spec, quantization=quant).eval()
    _randomize(lm.adapter_parameters())
    ids = _ids(lm, n=1, length=6)
    with torch.no_grad():
        cached = lm.model.generate(inputs_embeds=lm.embed(ids), attention_mask=torch.ones_like(ids), do_sample=False,
                                   max_new_tokens=5, min_new_tokens=5, eos_token_id=None, pad_token_id=0)
    plain = ids
    for _ in range(5):
        plain = torch.cat([plain, _logits(lm, plain)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(cached, plain[:, ids.shape[1]:])
