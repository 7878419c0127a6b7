"""`chimera merge`: fold a LoRA/QLoRA checkpoint's adapter into dense weights.

Writes OUT/merged.ckpt (loads with `load_module` / `chimera eval` like any checkpoint; its
config no longer mentions the adapter or quantisation) and OUT/language/ (the merged LM as a
plain transformers directory with its tokenizer).
"""

from __future__ import annotations

import copy
from pathlib import Path

from train.checkpoint import load_module, self_contained
from train.checkpoint_io import atomic_save


def _language_args(config: dict) -> dict:
    try:
        return config["init_args"]["model"]["init_args"]["language"]["init_args"]
    except (KeyError, TypeError) as err:
        raise ValueError("the checkpoint's config has no model.init_args.language section") from err


def merge_checkpoint(ckpt: str | Path, out_dir: str | Path) -> Path:
    module = load_module(ckpt)
    config = copy.deepcopy(module.chimera_config)
    args = _language_args(config)
    if args.get("adapter") is None:
        raise ValueError(f"{ckpt}: its language model has no adapter to merge")
    module.model.language.merge_adapter()
    args["adapter"], args["quantization"] = None, None
    args.pop("weights_from", None)  # the merged weights are in this checkpoint
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "merged.ckpt"
    merged = {"state_dict": module.state_dict(), "chimera_config": config, "merged_from": str(ckpt)}
    atomic_save(self_contained(merged, module), path)
    module.model.language.save_pretrained(out / "language")
    return path
