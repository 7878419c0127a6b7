"""LanguageModel: any transformers causal LM plus its tokenizer and the special tokens we need."""

from __future__ import annotations

import importlib.util
import operator
import os
import sys
import tempfile
from pathlib import Path
from typing import Literal

import torch
from huggingface_hub import save_torch_state_dict
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, PreTrainedTokenizerBase

from data.templates import IMAGE_TOKEN, PAD_TOKEN
from models.config_dict import ConfigDict
from models.meta_init import on_meta
from models.peft import Bottleneck, LlamaAdapter, LoRA, base_state_dict, is_4bit, load_4bit_pre_hook, merge_lora
from models.safe_load import read_state_dict
from models.tokenizer_files import tokenizer_from_files, tokenizer_to_files

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _load_offline(loader, name: str, what: str, **kwargs):
    """Call a transformers `from_pretrained`, turning "not found" into an error naming `name`."""
    if not Path(name).exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
        kwargs["local_files_only"] = True
    try:
        return loader(name, **kwargs)
    except OSError as err:
        where = "local directory" if Path(name).exists() else "hub id (not a local path; offline it must be in the cache)"
        raise FileNotFoundError(f"could not load {what} from {name!r} as a {where}: {err}") from err


CHECKPOINT_PREFIX = "model.language.model."


def checkpoint_weights(ckpt_path: str | Path, prefix: str, what: str) -> dict[str, Tensor]:
    """The `state_dict` entries of a `chimera fit` checkpoint or a release directory under `prefix`,
    prefix removed; errors name the option (`what`) and the file."""
    path = Path(ckpt_path)
    if not path.exists():
        raise FileNotFoundError(f"{what} checkpoint not found: {path}")
    state = read_state_dict(path)
    weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not weights:
        raise ValueError(f"{path} holds no `{prefix}*` weights: not a checkpoint of `chimera fit` with that part")
    return weights


def _load_dense_weights(model: nn.Module, ckpt_path: str) -> None:
    """The dense LM weights of a `chimera fit` checkpoint, loaded before quantisation and adapters,
    so a LoRA/QLoRA stage starts from an earlier stage's language model."""
    path = Path(ckpt_path)
    weights = checkpoint_weights(path, CHECKPOINT_PREFIX, "LanguageModel weights_from")
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise ValueError(f"weights_from {path}: the weights do not fit this language model: {err}") from err


def base_model(model: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (LoRA, QLoRA, LLaMA-Adapter), else `model` itself."""
    peft = sys.modules.get("peft")  # never imported: no peft model can exist
    return model.get_base_model() if peft is not None and isinstance(model, peft.PeftModel) else model


def decoder_layer_list(model: nn.Module, path: str | None = None) -> tuple[str, nn.ModuleList]:
    """(path, list) of a causal LM's decoder layers: the one finder Flamingo, the bottleneck adapters,
    layer compilation and FSDP use. Looked for on the transformers model, through a peft wrapper.

    `path` (e.g. "transformer.blocks") declares where the list is. Without it, it is the
    `nn.ModuleList` whose entries are (or each wrap one of) the classes the model declares
    indivisible (`_no_split_modules`, what transformers itself uses for device maps); so a list
    whose layers Flamingo wrapped is still found. Never from a model or parameter name.
    """
    base = base_model(model)
    if path is not None:
        try:
            layers = operator.attrgetter(path)(base)
        except AttributeError as err:
            raise ValueError(f"decoder_layers_path {path!r} not found on {type(base).__name__}: {err}") from err
        if not isinstance(layers, nn.ModuleList):
            raise ValueError(f"decoder_layers_path {path!r} is a {type(layers).__name__}, "
                             "not the nn.ModuleList of decoder layers")
        return path, layers
    declared = _declared_layer_classes(base)

    def holds_declared(entry: nn.Module) -> bool:
        return any(type(m).__name__ in declared for m in entry.modules())

    found = [(name, m) for name, m in base.named_modules()
             if isinstance(m, nn.ModuleList) and len(m) and all(holds_declared(entry) for entry in m)]
    if len(found) != 1:
        what = (f"several lists of {sorted(declared)} ({', '.join(n for n, _ in found)})" if found else
                f"no list of {sorted(declared)}" if declared else "no decoder-layer classes (`_no_split_modules`)")
        raise ValueError(f"{type(base).__name__} declares {what}: give decoder_layers_path")
    return found[0]


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """Each decoder layer itself, also where `decoder_layer_list` holds it inside a wrapper
    (Flamingo's): the first module of a declared layer class in each entry, else the entry."""
    declared = _declared_layer_classes(base_model(model))
    return [next((m for m in entry.modules() if type(m).__name__ in declared), entry)
            for entry in decoder_layer_list(model)[1]]


def _declared_layer_classes(model: nn.Module) -> set[str]:
    """Class names the model declares indivisible (`_no_split_modules`)."""
    return {name for m in model.modules() for name in (getattr(m, "_no_split_modules", None) or [])}


# transformers config keys that say where a model came from or how it was loaded, not its shape
# (quantisation is re-applied by `quantization`, the dtype by `dtype`)
_NOT_ARCHITECTURE = ("_name_or_path", "transformers_version", "architectures", "quantization_config", "dtype",
                     "torch_dtype", "_attn_implementation_autoset", "_commit_hash")


class LanguageModel(nn.Module):
    """A causal LM from a hub id / local dir (`name_or_path`) or built from `config` (random init).

    `config` is a transformers config dict with a `model_type` (e.g. "llama"); its vocab size
    and special token ids are filled from the tokenizer. `tokenizer` is a path, or the tokenizer's
    files as data (`models.tokenizer_files`, what a checkpoint carries). `<image>` is added to the tokenizer if
    missing and the embeddings are resized, so every LM gets the same image placeholder.

    PEFT: `quantization` loads the linear layers (not embeddings, not the head) as bitsandbytes
    Linear4bit; `adapter` then wraps the LM (nf4 + LoRA = QLoRA) and leaves only its parameters
    trainable. A config-built LM is quantised through the real loading path: saved to a temp dir
    and reloaded with a BitsAndBytesConfig. `weights_from` starts the dense LM from a `chimera fit`
    checkpoint first (LoRA/QLoRA on an earlier stage's model).

    Speed: `attn_implementation` is sdpa by default, `flash_attention_2` when flash-attn is
    installed; `gradient_checkpointing` recomputes every `checkpoint_every`-th decoder layer in the
    backward (1: all, the most memory saved; 2: half, ~1/6 less recompute); `compile_layers` names a
    torch.compile backend ("inductor") applied to each decoder layer, so graphs stay small and
    shared across layers. `revision` pins a hub commit/tag/branch.
    """

    def __init__(
        self,
        name_or_path: str | None = None,
        config: ConfigDict | None = None,
        tokenizer: str | dict[str, str] | None = None,
        dtype: str = "float32",
        attn_implementation: str = "sdpa",
        adapter: LoRA | LlamaAdapter | Bottleneck | None = None,
        quantization: Literal["nf4", "fp4"] | None = None,
        double_quant: bool = True,
        compute_dtype: str = "float32",
        gradient_checkpointing: bool = False,
        checkpoint_every: int = 1,
        compile_layers: str | None = None,
        weights_from: str | None = None,
        revision: str | None = None,
    ) -> None:
        super().__init__()
        if (name_or_path is None) == (config is None):
            raise ValueError("LanguageModel needs exactly one of `name_or_path` or `config`")
        for key, value in (("dtype", dtype), ("compute_dtype", compute_dtype)):
            if value not in _DTYPES:
                raise ValueError(f"LanguageModel {key} {value!r} unknown; choose one of {sorted(_DTYPES)}")
        if attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            raise ValueError("attn_implementation 'flash_attention_2' needs the flash-attn package "
                             "(pip install flash-attn, CUDA only); use 'sdpa' otherwise")
        if checkpoint_every < 1:
            raise ValueError(f"LanguageModel checkpoint_every must be >= 1, got {checkpoint_every}")
        if quantization not in (None, "nf4", "fp4"):
            raise ValueError(f"LanguageModel quantization {quantization!r} unknown; choose 'nf4', 'fp4' or None")
        tok_source = tokenizer or name_or_path
        if tok_source is None:
            raise ValueError("LanguageModel built from `config` needs a `tokenizer` path")
        hub = {"revision": revision} if revision is not None else {}
        if isinstance(tok_source, dict):  # the tokenizer's files, as a self-contained checkpoint carries them
            self.tokenizer: PreTrainedTokenizerBase = tokenizer_from_files(tok_source)
        else:
            self.tokenizer = _load_offline(
                AutoTokenizer.from_pretrained, tok_source, "tokenizer", **(hub if tokenizer is None else {}))
        added = {}
        if self.tokenizer.pad_token is None:
            added["pad_token"] = PAD_TOKEN
        if IMAGE_TOKEN not in self.tokenizer.get_vocab():
            added["additional_special_tokens"] = [IMAGE_TOKEN]
        if added:
            self.tokenizer.add_special_tokens(added)
        torch_dtype = _DTYPES[dtype]
        bnb_config = None if quantization is None else BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=quantization, bnb_4bit_use_double_quant=double_quant,
            bnb_4bit_compute_dtype=_DTYPES[compute_dtype],
        )
        if bnb_config is not None and on_meta():
            raise ValueError("LanguageModel: a quantized LM cannot be built on the meta device; train it "
                             "with train.strategies.FSDP(init_on_rank0: false), the default, or without FSDP")
        if name_or_path is not None and on_meta():  # the architecture only: rank 0 broadcasts the weights
            hf_config = _load_offline(AutoConfig.from_pretrained, name_or_path, "language model config", **hub)
            hf_config._attn_implementation = attn_implementation
            self.model = AutoModelForCausalLM.from_config(hf_config, dtype=torch_dtype)
        elif name_or_path is not None:
            self.model = _load_offline(
                AutoModelForCausalLM.from_pretrained, name_or_path, "language model",
                dtype=torch_dtype, attn_implementation=attn_implementation, **hub,
                **({"quantization_config": bnb_config} if bnb_config else {}),
            )
        else:
            cfg = dict(config)
            model_type = cfg.pop("model_type", None)
            if model_type is None:
                raise ValueError("LanguageModel `config` needs a `model_type` key, e.g. 'llama'")
            cfg.setdefault("vocab_size", len(self.tokenizer))
            for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
                cfg.setdefault(key, getattr(self.tokenizer, key))
            hf_config = AutoConfig.for_model(model_type, **cfg)
            hf_config._attn_implementation = attn_implementation
            self.model = AutoModelForCausalLM.from_config(hf_config, dtype=torch_dtype)
        if len(self.tokenizer) > self.model.get_input_embeddings().num_embeddings:
            self.model.resize_token_embeddings(len(self.tokenizer), mean_resizing=False)
        if weights_from is not None and not on_meta():
            _load_dense_weights(self.model, weights_from)
        if bnb_config is not None and name_or_path is None:
            with tempfile.TemporaryDirectory() as tmp:
                self.model.save_pretrained(tmp)
                self.model = AutoModelForCausalLM.from_pretrained(
                    tmp, dtype=torch_dtype, attn_implementation=attn_implementation, quantization_config=bnb_config)
        self.image_token_id: int = self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.adapter, self.quantization = adapter, quantization
        ckpt = {"use_reentrant": False}
        if any(is_4bit(m) for m in self.model.modules()):  # asked, or a 4-bit checkpoint
            from peft import prepare_model_for_kbit_training

            self.model = prepare_model_for_kbit_training(
                self.model, use_gradient_checkpointing=gradient_checkpointing, gradient_checkpointing_kwargs=ckpt)
            self.register_load_state_dict_pre_hook(load_4bit_pre_hook)
            for mod in self.model.modules():
                # bnb's CPU eval fast path repacks weights in place (bf16 scales, double quant
                # dropped, fails for in_features < 64): keep one format for train and eval
                if is_4bit(mod):
                    mod.support_avx512bf16_for_cpu = False
        if gradient_checkpointing:  # after kbit preparation, which enables it on every layer
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=ckpt,
                                                       every_n_layers=checkpoint_every)
        if adapter is not None:
            self.model = adapter.apply(self.model)
            self.mark_adapter_trainable()
        if compile_layers is not None:
            for layer in decoder_layers(self.model):
                layer.compile(backend=compile_layers)

    def recompute_while_frozen(self) -> None:
        """transformers recomputes a checkpointed layer only while that layer is in training mode,
        so a frozen LM (kept in eval: no dropout) would store every activation that gradients flow
        back through (LLaVA's projector alignment). Its checkpointed decoder layers report training
        themselves, their submodules (attention, MLP, dropout) stay in eval: recompute, no dropout."""
        layers = self.__dict__.get("_checkpointed_layers")  # found once: this runs every step
        if layers is None:
            layers = [m for m in decoder_layers(self.model) if getattr(m, "gradient_checkpointing", False)]
            self.__dict__["_checkpointed_layers"] = layers
        for layer in layers:
            layer.training = True

    def architecture(self) -> dict:
        """Constructor arguments that rebuild this LM with no file: its transformers config (random
        init; a checkpoint's state_dict then brings the weights) and its tokenizer as data. The other
        arguments (adapter, quantization, dtype, ...) stay as configured."""
        base = base_model(self.model)
        config = base.config.to_diff_dict()
        for key in _NOT_ARCHITECTURE:
            config.pop(key, None)
        config["model_type"] = base.config.model_type
        return {"name_or_path": None, "revision": None, "config": config,
                "tokenizer": tokenizer_to_files(self.tokenizer)}

    def adapter_parameters(self) -> list[nn.Parameter]:
        """What the adapter added (LoRA A/B, prompts and gates, bottleneck weights); [] without one."""
        return [] if self.adapter is None else self.adapter.adapter_parameters(self.model)

    def mark_adapter_trainable(self) -> None:
        """Freeze the LM except the adapter (all of it without one); stages call it after `requires_grad_(False)`."""
        for p in self.parameters():
            p.requires_grad_(False)
        for p in self.adapter_parameters():
            p.requires_grad_(True)

    def merge_adapter(self) -> None:
        """Fold LoRA into the weights, in place: afterwards the LM is a plain dense transformers model
        (a 4-bit base is dequantised to the dense layers' dtype, fp32 after kbit preparation)."""
        if self.adapter is None:
            raise ValueError("merge_adapter: this LanguageModel has no adapter")
        if not isinstance(self.adapter, LoRA):
            raise ValueError(f"merge_adapter: {type(self.adapter).__name__} adds an extra computation path, "
                             "not a weight delta, so it cannot be folded into the base weights; "
                             "save base + adapter instead (save_pretrained(merged=False))")
        dense_dtype = self.model.get_input_embeddings().weight.dtype
        self.model = merge_lora(self.model, dense_dtype)
        self.adapter, self.quantization = None, None
        self.__dict__.pop("_checkpointed_layers", None)  # found again in the merged model

    def add_special_tokens(self, tokens: list[str]) -> list[int]:
        """Add special tokens (e.g. Flamingo's `<|endofchunk|>`) if missing, resize the
        embeddings (new rows random, as HF does), and return their ids."""
        missing = [t for t in tokens if t not in self.tokenizer.get_vocab()]
        if missing:
            self.tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
            if len(self.tokenizer) > self.model.get_input_embeddings().num_embeddings:
                self.model.resize_token_embeddings(len(self.tokenizer), mean_resizing=False)
        return [self.tokenizer.convert_tokens_to_ids(t) for t in tokens]

    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().embedding_dim

    def embed(self, input_ids: Tensor) -> Tensor:
        return self.model.get_input_embeddings()(input_ids)

    def forward(self, inputs_embeds: Tensor, attention_mask: Tensor | None = None,
                position_ids: Tensor | None = None) -> Tensor:
        """Logits. Packed rows pass `position_ids` restarting at each sample and no attention
        mask: transformers then keeps attention inside each sample (block-diagonal causal)."""
        return self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False).logits

    def hidden_states(self, inputs_embeds: Tensor, attention_mask: Tensor | None = None,
                      position_ids: Tensor | None = None) -> Tensor:
        """The decoder's last hidden states, before the output head (for the chunked loss)."""
        decoder = self.model.get_decoder()
        return decoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                       use_cache=False).last_hidden_state

    @property
    def output_head(self) -> nn.Module:
        """The module mapping hidden states to logits; refuses models that rescale logits after it."""
        config = self.model.config
        for key in ("final_logit_softcapping", "logit_scale"):
            if getattr(config, key, None):
                raise ValueError(f"{config.model_type} applies `{key}` to its logits after the output head; "
                                 "the chunked loss does not support it: set loss_chunk_size to null")
        return self.model.get_output_embeddings()

    def save_pretrained(self, out_dir: str | Path, merged: bool = False) -> None:
        """A transformers checkpoint in `out_dir`, loadable as `LanguageModel(name_or_path=out_dir)`.

        `merged=True` first merges the adapter in place (LoRA only) and saves the dense model.
        Otherwise, with an adapter, `out_dir` holds the base (4-bit if quantised) with the original
        parameter names, and `out_dir/adapter` the adapter: peft's format (adapter_config.json +
        adapter_model.safetensors, for `PeftModel.from_pretrained`) for LoRA / LLaMA-Adapter, or
        `bottleneck.safetensors` keyed by module path for Bottleneck.
        """
        if merged and self.adapter is not None:
            self.merge_adapter()
        out_dir = Path(out_dir)
        if self.adapter is None:
            self.model.save_pretrained(out_dir)
        else:
            base = base_model(self.model)
            # written directly: transformers' save_pretrained ignores `state_dict` for quantised models
            base.config.save_pretrained(out_dir)
            if base.generation_config is not None:
                base.generation_config.save_pretrained(out_dir)
            save_torch_state_dict(base_state_dict(base), out_dir)
            if isinstance(self.adapter, Bottleneck):
                from safetensors.torch import save_file

                ids = {id(p) for p in self.adapter_parameters()}
                (out_dir / "adapter").mkdir(parents=True, exist_ok=True)
                save_file({n: p.detach().contiguous() for n, p in base.named_parameters() if id(p) in ids},
                          out_dir / "adapter" / "bottleneck.safetensors")
            else:
                self.model.save_pretrained(out_dir / "adapter")
        self.tokenizer.save_pretrained(out_dir)

