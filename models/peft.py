"""Parameter-efficient tuning specs (LoRA, LLaMA-Adapter, bottleneck adapters) and optimisers.

Each spec is a small typed dataclass so YAML configs pick one with `class_path`/`init_args`
and jsonargparse validates it; `apply(model)` returns the adapted model and
`adapter_parameters(model)` finds what it added by module type, never by parameter name.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedModel


def bitsandbytes():
    """Imported on first use: only 4-bit layers and the 8-bit / paged optimizers need it (and it
    prints a CPU-kernel warning on import), so plain runs and machines without it are unaffected."""
    import bitsandbytes as bnb

    return bnb


def peft():
    """peft, imported when an adapter is applied. Importing peft imports bitsandbytes, whose CPU
    backend warns that an optional 4-bit kernel is missing; that concerns 4-bit layers only, so it
    is quieted here (a 4-bit LM imports bitsandbytes earlier, through transformers, and shows it)."""
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import peft as lib
    finally:
        logger.setLevel(level)
    return lib


def adapter_layer_types() -> tuple[type | tuple, type | tuple]:
    """peft's LoRA and adaption-prompt layer classes (for isinstance); if peft was never
    imported no such layer can exist, and `()` matches nothing."""
    if "peft" not in sys.modules:
        return (), ()
    from peft.tuners.adaption_prompt.layer import _BaseAdaptedAttention
    from peft.tuners.lora import LoraLayer

    return LoraLayer, _BaseAdaptedAttention


def is_4bit(module: nn.Module) -> bool:
    """A bitsandbytes Linear4bit; if bitsandbytes was never imported, none can exist."""
    bnb = sys.modules.get("bitsandbytes")
    return bnb is not None and isinstance(module, bnb.nn.Linear4bit)

_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}


def linear_layer_names(model: nn.Module) -> list[str]:
    """Leaf names of every dense or 4-bit linear except the output head (found by identity, not name)."""
    head = model.get_output_embeddings()
    names, excluded = set(), set()
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) or is_4bit(mod):
            (excluded if mod is head else names).add(name.rsplit(".", 1)[-1])
    if names & excluded:  # a leaf name shared with the head: fall back to full paths
        return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m is not head]
    return sorted(names)


@dataclass
class LoRA:
    """Low-rank updates W + (alpha/r) B A on the LM's linear layers; B starts at zero."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] | None = None

    def apply(self, model: PreTrainedModel) -> PreTrainedModel:
        lib = peft()
        cfg = lib.LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, task_type="CAUSAL_LM",
                             target_modules=self.target_modules or linear_layer_names(model))
        return lib.get_peft_model(model, cfg)

    def adapter_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        lora_layer, _ = adapter_layer_types()
        return [p for m in model.modules() if isinstance(m, lora_layer)
                for d in (m.lora_A, m.lora_B) for p in d.parameters()]


@dataclass
class LlamaAdapter:
    """LLaMA-Adapter (Zhang et al. 2023): learned prompts attended to by the top `adapter_layers`
    self-attentions through a zero-initialised gate (peft's adaption prompt; llama/mistral only)."""

    adapter_len: int = 10
    adapter_layers: int = 2

    def apply(self, model: PreTrainedModel) -> PreTrainedModel:
        lib = peft()
        cfg = lib.AdaptionPromptConfig(adapter_len=self.adapter_len, adapter_layers=self.adapter_layers,
                                       task_type="CAUSAL_LM")
        return lib.get_peft_model(model, cfg)

    def adapter_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        _, adapted_attention = adapter_layer_types()
        return [p for m in model.modules() if isinstance(m, adapted_attention)
                for p in (m.adaption_prompt, m.adaption_gate)]


class BottleneckMLP(nn.Module):
    """Houlsby down/up projection; the up projection starts at zero so the model starts unchanged."""

    def __init__(self, dim: int, hidden: int, activation: str = "gelu") -> None:
        super().__init__()
        self.down, self.act, self.up = nn.Linear(dim, hidden), _ACTIVATIONS[activation](), nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x)))


class Adapted(nn.Module):
    """Runs a sublayer and adds the adapter to its output (the first element when it returns a
    tuple, as llama's attention does with its weights), before the decoder's residual add."""

    def __init__(self, inner: nn.Module, adapter: BottleneckMLP) -> None:
        super().__init__()
        self.inner, self.adapter = inner, adapter

    def forward(self, *args, **kwargs):
        out = self.inner(*args, **kwargs)
        if isinstance(out, tuple):
            return (out[0] + self.adapter(out[0]), *out[1:])
        return out + self.adapter(out)


@dataclass
class Bottleneck:
    """Houlsby adapters after the attention and the MLP of every decoder layer (at `layers_path`, or
    found as Flamingo finds them: `models.language.decoder_layer_list`); width is `bottleneck_dim`
    or hidden // `reduction`."""

    reduction: int = 4
    bottleneck_dim: int | None = None
    activation: Literal["gelu", "relu", "silu", "tanh"] = "gelu"
    layers_path: str | None = None
    sublayers: tuple[str, ...] = ("self_attn", "mlp")

    def apply(self, model: PreTrainedModel) -> PreTrainedModel:
        dim = model.get_input_embeddings().embedding_dim
        hidden = self.bottleneck_dim or max(1, dim // self.reduction)
        ref = model.get_input_embeddings().weight
        from models.language import decoder_layer_list  # language imports this module

        for layer in decoder_layer_list(model, self.layers_path)[1]:
            for name in self.sublayers:
                adapter = BottleneckMLP(dim, hidden, self.activation).to(ref.device, ref.dtype)
                setattr(layer, name, Adapted(getattr(layer, name), adapter))
        return model

    def adapter_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return [p for m in model.modules() if isinstance(m, BottleneckMLP) for p in m.parameters()]


Adapter = LoRA | LlamaAdapter | Bottleneck

OptimizerName = Literal["adamw", "adamw_fused", "paged_adamw", "paged_adamw_8bit", "adamw_8bit"]


def build_optimizer(name: OptimizerName, param_groups, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                    weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """AdamW variants. `adamw_fused`: torch's single-kernel AdamW (CUDA and CPU), the same update
    as `adamw` in fewer launches. Paged states live in CUDA unified memory and page out under
    pressure (QLoRA's fix for memory spikes); on CPU bitsandbytes falls back to ordinary state (it warns)."""
    bnb_names = {"paged_adamw": "PagedAdamW", "paged_adamw_8bit": "PagedAdamW8bit", "adamw_8bit": "AdamW8bit"}
    if name in ("adamw", "adamw_fused"):
        return torch.optim.AdamW(param_groups, lr=lr, betas=betas, weight_decay=weight_decay,
                                 fused=name == "adamw_fused")
    if name not in bnb_names:
        raise ValueError(f"optimizer {name!r} unknown; choose one of {sorted(['adamw', 'adamw_fused', *bnb_names])}")
    cls = getattr(bitsandbytes().optim, bnb_names[name])
    return cls(param_groups, lr=lr, betas=betas, weight_decay=weight_decay)


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict the model had before adapters: wrapper modules (LoRA, adaption prompt,
    `Adapted`) are looked through at their own path and their adapter entries dropped."""
    out: dict[str, torch.Tensor] = {}
    lora_layer, adapted_attention = adapter_layer_types()

    def visit(mod: nn.Module, prefix: str) -> None:
        inner = (mod.get_base_layer() if isinstance(mod, lora_layer) else mod.model
                 if isinstance(mod, adapted_attention) else mod.inner if isinstance(mod, Adapted) else None)
        if inner is not None:
            return visit(inner, prefix)
        mod._save_to_state_dict(out, prefix, keep_vars=False)  # this module's own entries only
        for name, child in mod.named_children():
            visit(child, f"{prefix}{name}.")

    visit(model, "")
    return out


# --- 4-bit bases: dequantise, reload, merge -------------------------------------------------


def dense_weight(layer: nn.Module, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The dense weight a Linear4bit computes with (bnb repacks CPU weights for AVX512 inference)."""
    bnb = bitsandbytes()
    w = layer.weight
    data, state = w.data, w.quant_state
    if getattr(state, "packing_format_for_cpu", False):
        data, state = bnb.functional._convert_weight_packed_for_cpu_inverse(data, state)
    return bnb.functional.dequantize_4bit(data, state).to(dtype)


def load_4bit_pre_hook(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """`load_state_dict` for Linear4bit: bnb saves the quant state as extra `weight.*` entries but
    cannot load them, so rebuild each Params4bit from them and leave only `weight` to copy."""
    for name, mod in module.named_modules():
        if not is_4bit(mod):
            continue
        key = f"{prefix}{name}.weight" if name else f"{prefix}weight"
        stats = {k[len(key) + 1:]: state_dict.pop(k) for k in list(state_dict) if k.startswith(key + ".")}
        if stats and key in state_dict:
            mod.weight = bitsandbytes().nn.Params4bit.from_prequantized(
                state_dict[key], stats, requires_grad=False, device=mod.weight.device, module=mod)


def _dense_linear(q: nn.Module, lora: nn.Module | None, dtype: torch.dtype) -> nn.Linear:
    dense = nn.Linear(q.in_features, q.out_features, bias=q.bias is not None, dtype=dtype, device=q.weight.device)
    with torch.no_grad():
        weight = dense_weight(q, torch.float32)
        for adapter in lora.active_adapters if lora is not None else ():
            weight += lora.get_delta_weight(adapter).float()
        dense.weight.copy_(weight)
        if q.bias is not None:
            dense.bias.copy_(q.bias)
    return dense


def merge_lora(peft_model, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """Fold LoRA into dense weights. A 4-bit base is dequantised first, so the result is a plain
    dense model (peft's own 4-bit merge would requantise W + BA and lose the update's precision)."""
    base = peft_model.get_base_model()
    lora_layer, _ = adapter_layer_types()
    loras = {id(m.get_base_layer()): m for m in base.modules() if isinstance(m, lora_layer)}
    replace = []  # (path, Linear4bit, its LoRA wrapper or None); the wrapper's path is replaced
    for name, mod in base.named_modules():
        if isinstance(mod, lora_layer) and is_4bit(mod.get_base_layer()):
            replace.append((name, mod.get_base_layer(), mod))
        elif is_4bit(mod) and id(mod) not in loras:
            replace.append((name, mod, None))
    for name, q, lora in replace:
        parent, _, leaf = name.rpartition(".")
        setattr(base.get_submodule(parent), leaf, _dense_linear(q, lora, dtype))
    merged = peft_model.merge_and_unload()  # LoRA on dense layers, and the peft wrapper
    if getattr(merged, "hf_quantizer", None) is not None:
        merged.hf_quantizer.remove_quantization_config(merged)
    for flag in ("is_loaded_in_4bit", "is_loaded_in_8bit"):
        if hasattr(merged, flag):
            setattr(merged, flag, False)
    return merged
