"""Single-prompt inference from a checkpoint (the `chimera generate` command).

The prompt is built as validation and `chimera eval` build theirs (`PromptDataset` with the model's own
transforms, `prompt_collator`, `media_arguments`), so an any-resolution model reads its tiles and sizes.
"""

from __future__ import annotations

from pathlib import Path

from data.collate import media_arguments
from data.conversation_dataset import PromptDataset
from train.checkpoint import load_module
from train.data_module import prompt_collator, prompt_transforms


def generate_answer(ckpt: str, prompt: str, image: str | None = None, max_new_tokens: int = 32) -> str:
    module = load_module(ckpt)
    model = module.model
    record = {"id": "prompt"}
    if image is not None:
        if not Path(image).is_file():
            raise FileNotFoundError(f"image not found: {image}")
        record["image"] = str(Path(image).resolve())
    item = PromptDataset([record], ".", [prompt], model.tokenizer, module.template, **prompt_transforms(model))[0]
    if item is None:
        raise ValueError(f"image {image} could not be read as an image")
    batch = prompt_collator(model)([item])
    out = model.generate(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                         max_new_tokens=max_new_tokens, **media_arguments(batch))
    return model.tokenizer.decode(out[0], skip_special_tokens=True).strip()
