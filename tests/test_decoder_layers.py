"""One decoder-layer finder (models.language.decoder_layer_list) for Flamingo, the bottleneck adapters,
layer compilation and FSDP; Flamingo on a LoRA and a QLoRA language model."""

import pytest
import torch
from peft.tuners.lora import LoraLayer

from models.flamingo import Flamingo, FlamingoLayer
from models.interop import chimera_to_openflamingo
from models.language import LanguageModel, decoder_layer_list
from models.peft import Bottleneck, BottleneckMLP, LoRA
from models.resampler import PerceiverResampler
from models.vision import TimmVision
from tests.tiny import LM_CONFIG, VISION, tiny_world
from train.module import VLMModule
from train.strategies import FSDP

H = VISION["init_args"]["image_size"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return str(tiny_world(tmp_path_factory.mktemp("world")) / "tokenizer")


def lm(tok, **kw):
    torch.manual_seed(0)
    return LanguageModel(config=LM_CONFIG, tokenizer=tok, **kw)


def flamingo(language):
    torch.manual_seed(0)
    return Flamingo(TimmVision(**VISION["init_args"]), language, xattn_heads=2, xattn_dim_head=8, xattn_ff_mult=2,
                    resampler=lambda i, o: PerceiverResampler(i, o, num_latents=4, depth=1, heads=2, dim_head=8))


def test_the_same_list_is_found_on_plain_peft_and_flamingo_wrapped_models(tok):
    plain = lm(tok)
    path, layers = decoder_layer_list(plain.model)
    assert path == "model.layers" and layers is plain.model.model.layers and len(layers) == 2
    lora = lm(tok, adapter=LoRA(r=4))
    path, layers = decoder_layer_list(lora.model)  # through peft's PeftModelForCausalLM
    assert path == "model.layers" and layers is lora.model.get_base_model().model.layers
    assert decoder_layer_list(lora.model, "model.layers")[1] is layers
    model = flamingo(plain)
    assert all(isinstance(layer, FlamingoLayer) for layer in model.decoder_layers)
    assert decoder_layer_list(plain.model)[1] is model.decoder_layers  # still found, wrapped
    with pytest.raises(ValueError, match="decoder_layers_path 'model.blocks' not found on LlamaForCausalLM"):
        decoder_layer_list(plain.model, "model.blocks")
    with pytest.raises(ValueError, match="'model.norm' is a LlamaRMSNorm, not the nn.ModuleList"):
        decoder_layer_list(plain.model, "model.norm")
    with pytest.raises(ValueError, match="declares no decoder-layer classes .* give decoder_layers_path"):
        decoder_layer_list(torch.nn.Sequential(torch.nn.ModuleList([torch.nn.Linear(2, 2)])))


def test_bottleneck_adapters_go_where_the_finder_says(tok):
    adapted = lm(tok, adapter=Bottleneck(bottleneck_dim=4))
    layers = decoder_layer_list(adapted.model)[1]
    per_layer = [sum(isinstance(m, BottleneckMLP) for m in layer.modules()) for layer in layers]
    assert per_layer == [2, 2]  # after attention and MLP of every layer
    assert sum(isinstance(m, BottleneckMLP) for m in adapted.modules()) == 4


@pytest.mark.parametrize("quantization", [None, "nf4"])
def test_flamingo_on_a_lora_language_model_builds_trains_and_generates(tok, quantization):
    model = flamingo(lm(tok, adapter=LoRA(r=4, dropout=0.0), quantization=quantization))
    assert len(model.cross_attention) == 2
    assert FSDP().plan(model)[0] >= {type(model.decoder_layers[0].decoder_layer)}
    module = VLMModule(model, stage="finetune")  # bridge + the LM's adapter
    lora = [p for m in model.language.modules() if isinstance(m, LoraLayer) for p in m.lora_B.parameters()]
    lora_ids = {id(p) for p in model.language.adapter_parameters()}
    assert lora and {id(p) for p in lora} <= lora_ids
    base = {n: p.detach().clone() for n, p in model.language.named_parameters() if id(p) not in lora_ids}
    assert not any(p.requires_grad for n, p in model.language.named_parameters() if id(p) not in lora_ids)
    assert all(p.requires_grad for p in model.cross_attention.parameters())

    with torch.no_grad():  # open gates, so the text depends on the image
        for block in model.cross_attention:
            block.attn_gate.fill_(1.0)
    img = model.image_token_id
    ids = torch.tensor([[img, 5, 6, 7, 8, 9], [10, img, 11, 12, 13, 14]])
    pixels = torch.randn(2, 3, H, H, generator=torch.Generator().manual_seed(0))
    module.train()
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    _, loss = model(ids, torch.ones_like(ids), pixels, labels=ids)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for b in model.cross_attention
               for p in (b.attn_gate, b.to_q.weight, b.to_kv.weight))
    opt.step()
    assert all(p.abs().sum() > 0 for p in lora)  # B started at zero and moved
    after = dict(model.language.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in base.items())  # base weights (4-bit or dense) unchanged

    module.eval()
    prompt = torch.tensor([[img, 5, 6]])
    out = model.generate(prompt, torch.ones_like(prompt), pixels[:1], max_new_tokens=4, eos_token_id=None)
    assert out.shape == (1, 4) and out.dtype == torch.long
    with torch.no_grad():  # greedy decoding continues what the full forward predicts
        first = model(prompt, torch.ones_like(prompt), pixels[:1])[0][0, -1].argmax()
        blank = model(prompt, torch.ones_like(prompt), torch.zeros_like(pixels[:1]))[0]
    assert out[0, 0] == first
    with pytest.raises(ValueError, match="has an adapter or is quantised"):  # open_flamingo's names hold no LoRA
        chimera_to_openflamingo(model)
    assert not torch.allclose(blank, model(prompt, torch.ones_like(prompt), pixels[:1])[0])  # the image counts
