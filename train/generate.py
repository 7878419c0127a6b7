"""Single-prompt inference from a checkpoint (the `chimera generate` command)."""

from __future__ import annotations

from pathlib import Path

import torch

from data.images import load_image
from data.tokenize import tokenize_prompt
from train.checkpoint import load_module
from train.data_module import image_placeholders


def generate_answer(ckpt: str, prompt: str, image: str | None = None, max_new_tokens: int = 32) -> str:
    module = load_module(ckpt)
    model = module.model
    pixels = None
    if image is not None:
        if not Path(image).is_file():
            raise FileNotFoundError(f"image not found: {image}")
        im = load_image(image)
        if im is None:
            raise ValueError(f"image {image} could not be read as an image")
        pixels = model.vision.transform(train=False)(im)[None]
    ids = torch.tensor(tokenize_prompt(prompt, model.tokenizer, module.template, image=image is not None))
    placeholders = image_placeholders(model)
    if placeholders is not None:  # a LLaVA reads its image tokens from the sequence
        ids, _ = placeholders.widen(ids)
    ids = ids[None]
    out = model.generate(ids, torch.ones_like(ids), pixels, max_new_tokens=max_new_tokens)
    return model.tokenizer.decode(out[0], skip_special_tokens=True).strip()
