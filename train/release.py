"""A release directory: a trained model as files any machine can read without running code.

    DIR/model.safetensors       every tensor of the module's state_dict, under the same names
    DIR/config.json             {"chimera_release": 1, "model": the architecture config}
                                (`train.architecture`: no upstream path; the LM's tokenizer entry is null)
    DIR/tokenizer.json, ...     the LM's tokenizer (`save_pretrained`, with its chat_template if any)
    DIR/image_processing.json   the vision tower's preprocessing (size, mean, std, resize mode)

`load_module(DIR)` (so `chimera generate|eval --ckpt DIR`) and `init_from: DIR` read it. A
LoRA/QLoRA model is released as it trained: base weights plus adapter weights, config with the
adapter; `chimera merge` it first for a dense release.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import Tensor, nn

from models.clip import ContrastiveDualEncoder
from models.language import LanguageModel
from models.safe_load import RELEASE_WEIGHTS, read_state_dict
from models.vision import VisionEncoder
from train.architecture import architecture_config, component_args
from train.checkpoint_io import atomic_write

RELEASE_CONFIG = "config.json"
IMAGE_PROCESSING = "image_processing.json"
FORMAT_VERSION = 1


def write_release(module: nn.Module, out_dir: str | Path) -> Path:
    """Write `module` (with its `chimera_config`) as a release directory; returns the directory."""
    from safetensors.torch import save_file

    if not getattr(module, "chimera_config", None):
        raise ValueError("the module has no `chimera_config`: only modules built by `chimera fit` or "
                         "`load_module` can be released")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = architecture_config(module.chimera_config, module)
    languages = [m for m in module.modules() if isinstance(m, LanguageModel)]
    for args in component_args(config, LanguageModel):
        args["tokenizer"] = None  # the tokenizer is the directory's files, not data in the config
    if len(languages) > 1:
        raise ValueError(f"the module holds {len(languages)} language models; a release has one tokenizer")
    for language in languages:
        language.tokenizer.save_pretrained(out)
    towers = [m for m in module.modules() if isinstance(m, (VisionEncoder, ContrastiveDualEncoder))]
    if towers:
        _write_json(out / IMAGE_PROCESSING, towers[0].transform(train=False).to_dict())
    state = _unshared(module.state_dict())
    atomic_write(out / RELEASE_WEIGHTS, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    _write_json(out / RELEASE_CONFIG, {"chimera_release": FORMAT_VERSION, "model": config})
    return out


def read_release(directory: str | Path) -> tuple[dict, dict[str, Tensor]]:
    """(module config, state_dict) of a release directory; the config's LM reads its tokenizer
    from the directory."""
    directory = Path(directory)
    path = directory / RELEASE_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is a directory without {RELEASE_CONFIG}: not a chimera release")
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or "chimera_release" not in data:
        raise ValueError(f"{path} is not a chimera release config (no `chimera_release` key; "
                         "a transformers directory loads with transformers)")
    if data["chimera_release"] > FORMAT_VERSION:
        raise ValueError(f"{path}: release format {data['chimera_release']} is newer than this Chimera "
                         f"reads ({FORMAT_VERSION}); update Chimera")
    config = data["model"]
    for args in component_args(config, LanguageModel):
        args["tokenizer"] = str(directory)
    return config, read_state_dict(directory)


def _unshared(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """safetensors refuses tensors that share memory (tied embeddings): later aliases get a copy,
    so every name of the state_dict is kept and loading stays strict."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for name, tensor in state.items():
        tensor = tensor.detach()
        key = (tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
        out[name] = tensor.clone().contiguous() if key in seen else tensor.contiguous()
        seen.add(key)
    return out


def _write_json(path: Path, value) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(value, indent=2) + "\n"))
