"""LanguageModel: any transformers causal LM plus its tokenizer and the special tokens we need."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from data.templates import IMAGE_TOKEN, PAD_TOKEN

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


class LanguageModel(nn.Module):
    """A causal LM from a hub id / local dir (`name_or_path`) or built from `config` (random init).

    `config` is a transformers config dict with a `model_type` (e.g. "llama"); its vocab size
    and special token ids are filled from the tokenizer. `<image>` is added to the tokenizer if
    missing and the embeddings are resized, so every LM gets the same image placeholder.
    """

    def __init__(
        self,
        name_or_path: str | None = None,
        config: dict | None = None,
        tokenizer: str | None = None,
        dtype: str = "float32",
        attn_implementation: str = "sdpa",
    ) -> None:
        super().__init__()
        if (name_or_path is None) == (config is None):
            raise ValueError("LanguageModel needs exactly one of `name_or_path` or `config`")
        if dtype not in _DTYPES:
            raise ValueError(f"LanguageModel dtype {dtype!r} unknown; choose one of {sorted(_DTYPES)}")
        tok_source = tokenizer or name_or_path
        if tok_source is None:
            raise ValueError("LanguageModel built from `config` needs a `tokenizer` path")
        self.tokenizer: PreTrainedTokenizerBase = _load_offline(AutoTokenizer.from_pretrained, tok_source, "tokenizer")
        added = {}
        if self.tokenizer.pad_token is None:
            added["pad_token"] = PAD_TOKEN
        if IMAGE_TOKEN not in self.tokenizer.get_vocab():
            added["additional_special_tokens"] = [IMAGE_TOKEN]
        if added:
            self.tokenizer.add_special_tokens(added)
        torch_dtype = _DTYPES[dtype]
        if name_or_path is not None:
            self.model = _load_offline(
                AutoModelForCausalLM.from_pretrained, name_or_path, "language model",
                dtype=torch_dtype, attn_implementation=attn_implementation,
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
        self.image_token_id: int = self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)

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

    def forward(self, inputs_embeds: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=False).logits

    def save_pretrained(self, out_dir: str | Path) -> None:
        self.model.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)
