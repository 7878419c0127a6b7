"""Batched decoding for evaluation: left-padded prompts, KV cache, greedy or beam, stop strings.

Batches are formed from prompts sorted by token length, longest first (as lmms-eval's collator
does): a batch pads to nearly its own length, and the largest batch runs first, so one that does
not fit fails at once. Predictions go back to the records' order, and every sample's prediction
depends only on its own prompt, so scores do not change with the batch size or the sorting
(tests/test_eval_batching.py checks batch 1 against batch N on every generative task).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import DataLoader

from data.collate import Collator
from data.conversation_dataset import PromptDataset
from data.templates import ChatTemplate, TemplateName
from data.tokenize import tokenize_generation_prompt, tokenize_prompt
from train.data_module import image_placeholders


@dataclass
class Decoding:
    """How prompts are built and decoded. The prompt settings (`template`, `prompt_suffix`) live here
    so every caller (`chimera eval`, a pipeline's eval stage, `EvalAtFitEnd`) takes them the same way."""

    max_new_tokens: int | None = None  # None: the task's default
    num_beams: int = 1
    stop: list[str] = field(default_factory=lambda: ["\n"])
    batch_size: int = 16
    sort_by_length: bool = True  # batches of similar prompt lengths, longest first (outputs keep the data's order)
    shots: int = 0  # k-shot prompting: demonstrations before each query
    demos: str = "rices"  # "rices" or "random"
    support: str | None = None  # demonstration pool (same format as the task's data); None: the eval set
    seed: int = 0
    template: TemplateName | None = None  # a named template instead of the checkpoint's own
    prompt_suffix: dict[str, str] = field(default_factory=dict)  # task -> suffix; others keep the task's default
    mc_mode: Literal["generate", "loglik"] = "generate"  # multiple choice: answer parsing, or loglik.py


def prompt_template(module, decoding: Decoding) -> ChatTemplate:
    """The template prompts are rendered with: `decoding.template` by name, else the checkpoint's."""
    return ChatTemplate.named(decoding.template) if decoding.template else module.template


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """Everything before the first stop string (generation may run past it inside a batch)."""
    cut = len(text)
    for s in stop:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut].strip()


def prompt_lengths(dataset: PromptDataset, placeholders=None) -> list[int]:
    """Each prompt's length in LM positions as the collator will build it (an `<image>` counts as its
    placeholders' width), tokenized as `PromptDataset` does, without loading any image."""
    tok, template = dataset.tokenizer, dataset.template
    lengths = []
    for rec, prompt in zip(dataset.records, dataset.prompts):
        if isinstance(prompt, list):
            ids = tokenize_generation_prompt(prompt, tok, template)
        else:
            ids = tokenize_prompt(prompt, tok, template, image=rec.get("image") is not None)
        extra = 0 if placeholders is None else (placeholders.width - 1) * ids.count(placeholders.token_id)
        lengths.append(len(ids) + extra)
    return lengths


def length_order(lengths: Sequence[int]) -> list[int]:
    """Indices by descending length; equal lengths keep the data's order (deterministic)."""
    return sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))


@torch.no_grad()
def generate_predictions(module, records: list[dict], root: str | Path, prompts: list[str | list[dict]],
                         decoding: Decoding, max_new_tokens: int, num_workers: int = 0) -> list[str | None]:
    """One raw response per record (the caller cuts it at `decoding.stop` with `cut_at_stop`; both are
    logged); None where an image is missing or unreadable. A prompt is a question, or (few-shot) a
    conversation whose last turn is the question."""
    model = module.model
    tok = model.tokenizer
    dataset = PromptDataset(records, root, prompts, tok, prompt_template(module, decoding),
                            model.vision.transform(train=False))
    placeholders = image_placeholders(model)
    order = length_order(prompt_lengths(dataset, placeholders)) if decoding.sort_by_length else None
    loader = DataLoader(dataset, batch_size=decoding.batch_size, sampler=order, num_workers=num_workers,
                        collate_fn=Collator(tok.pad_token_id, left_pad=True, placeholders=placeholders))
    predictions: list[str | None] = [None] * len(records)
    stop_kwargs = {"stop_strings": list(decoding.stop), "tokenizer": tok} if decoding.stop else {}
    for batch, ids, mask, pixels in device_batches(module, loader):
        out = model.generate(ids, mask, pixels, max_new_tokens=max_new_tokens, num_beams=decoding.num_beams,
                             use_cache=True, **stop_kwargs)
        for meta, text in zip(batch["meta"], tok.batch_decode(out, skip_special_tokens=True)):
            predictions[meta["index"]] = text
    return predictions


def device_batches(module, loader):
    """Each usable batch of `loader` (one whose images all failed has no ids) with its ids, mask and
    pixels on the model's device; the module is in eval mode meanwhile and set back afterwards."""
    device = next(module.model.parameters()).device
    was_training = module.training
    module.eval()
    try:
        for batch in loader:
            if "input_ids" not in batch:
                continue
            pixels = batch["pixel_values"].to(device) if batch["pixel_values"] is not None else None
            yield batch, batch["input_ids"].to(device), batch["attention_mask"].to(device), pixels
    finally:
        module.train(was_training)
