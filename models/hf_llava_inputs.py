"""How a transformers LLaVA directory prepares its inputs, read as data for `chimera import`.

Imported weights score as published only when fed the prompts and pixels they were trained on:
the template is chosen from the directory's Jinja `chat_template` (`data.template_jinja`), the
image mode and normalisation from its image processor config (`models.hf_image_processor`).
Nothing is chosen from the model's name.
"""

from __future__ import annotations

import json
from pathlib import Path

from data.template_jinja import template_for_chat_template
from models.hf_image_processor import image_mode_of


def image_processor_config(src: str | Path) -> dict:
    """The saved image processor settings: preprocessor_config.json (hub LLaVA-1.5 releases) or the
    `image_processor` entry of processor_config.json (transformers >= 5); {} when neither exists."""
    src = Path(src)
    if (src / "preprocessor_config.json").is_file():
        return json.loads((src / "preprocessor_config.json").read_text())
    if (src / "processor_config.json").is_file():
        return json.loads((src / "processor_config.json").read_text()).get("image_processor") or {}
    return {}


def image_settings(src: str | Path) -> dict:
    """`HFVision` kwargs (`image_mode`, and `image_mean` / `image_std` where saved) of the directory."""
    config = image_processor_config(src)
    out = {"image_mode": image_mode_of(config)} if config else {}
    out.update({k: [float(v) for v in config[k]] for k in ("image_mean", "image_std") if config.get(k)})
    return out


def chat_template_of(src: str | Path, tokenizer) -> str | None:
    """The Jinja template: the tokenizer's, else the processor's chat_template.jinja / chat_template.json."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.chat_template
    src = Path(src)
    if (src / "chat_template.jinja").is_file():
        return (src / "chat_template.jinja").read_text()
    if (src / "chat_template.json").is_file():
        return json.loads((src / "chat_template.json").read_text()).get("chat_template")
    return None


def template_of(src: str | Path, tokenizer) -> tuple[dict, str, str | None]:
    """`(template config, reason, Jinja template)` for an imported checkpoint's `VLMModule.template`."""
    jinja = chat_template_of(src, tokenizer)
    template, reason = template_for_chat_template(tokenizer, jinja)
    return template, reason, jinja
