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

import PIL.Image
import torch
from torch.utils.data import DataLoader

from data.anyres_images import AnyResTransform
from data.collate import media_arguments
from data.conversation_dataset import PromptDataset, media_count, media_paths
from data.image_placeholders import ImagePlaceholders
from data.templates import ChatTemplate, TemplateName, with_image_placeholders
from data.tokenize import tokenize_generation_prompt, tokenize_prompt
from train.data_module import image_placeholders, prompt_collator, prompt_transforms


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


def prompt_dataset(module, records: list[dict], root: str | Path, prompts: list[str | list[dict]],
                   decoding: Decoding) -> PromptDataset:
    """The prompts as validation builds them: the module's (or the named) template, media read by the
    model's own transforms (`train.data_module.prompt_transforms`: any-resolution views with their
    sizes, video clips)."""
    return PromptDataset(records, root, prompts, module.model.tokenizer, prompt_template(module, decoding),
                         **prompt_transforms(module.model))


def prompt_lengths(dataset: PromptDataset, placeholders: ImagePlaceholders | None = None) -> list[int]:
    """Each prompt's length in LM positions as the collator will build it (an `<image>` counts as its
    media's width, `media_widths`), tokenized as `PromptDataset` does, without decoding any image."""
    tok, template = dataset.tokenizer, dataset.template
    lengths = []
    for rec, prompt in zip(dataset.records, dataset.prompts):
        if isinstance(prompt, list):
            ids = tokenize_generation_prompt(prompt, tok, template)
        else:
            ids = tokenize_prompt(with_image_placeholders(prompt, media_count(rec)), tok, template, image=False)
        extra = 0
        if placeholders is not None:
            extra = sum(media_widths(dataset, rec, placeholders)) - ids.count(placeholders.token_id)
        lengths.append(len(ids) + extra)
    return lengths


def media_widths(dataset: PromptDataset, rec: dict, placeholders: ImagePlaceholders) -> list[int]:
    """LM positions of each of a record's media as the dataset's transforms will give them, from file
    headers only: a clip's width by the clip transform, an any-resolution image its size's
    count (a file that cannot be opened: the base width; its item is skipped anyway), else the fixed width."""
    if "video" in rec:
        return [dataset.clip_transform.width(len(rec["video"])) if dataset.clip_transform else len(rec["video"])]
    paths = media_paths(rec)
    if not isinstance(dataset.transform, AnyResTransform):
        return [placeholders.width] * len(paths)
    widths = []
    for p in paths:
        try:
            with PIL.Image.open(dataset.root / p) as im:  # reads the header, not the pixels
                widths.append(dataset.transform.layout.num_tokens((im.height, im.width)))
        except (OSError, ValueError):
            widths.append(placeholders.width)
    return widths


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
    dataset = prompt_dataset(module, records, root, prompts, decoding)
    order = length_order(prompt_lengths(dataset, image_placeholders(model))) if decoding.sort_by_length else None
    loader = DataLoader(dataset, batch_size=decoding.batch_size, sampler=order, num_workers=num_workers,
                        collate_fn=prompt_collator(model))
    predictions: list[str | None] = [None] * len(records)
    stop_kwargs = {"stop_strings": list(decoding.stop), "tokenizer": tok} if decoding.stop else {}
    for batch, ids, mask, pixels in device_batches(module, loader):
        out = model.generate(ids, mask, pixels, max_new_tokens=max_new_tokens, num_beams=decoding.num_beams,
                             use_cache=True, **media_arguments(batch), **stop_kwargs)
        for meta, text in zip(batch["meta"], tok.batch_decode(out, skip_special_tokens=True)):
            predictions[meta["index"]] = text
    return predictions


def device_batches(module, loader):
    """Each usable batch of `loader` (one whose images all failed has no ids) with its ids, mask and
    pixels on the model's device (the batch's `media_arguments` stay host ints); the module is in eval
    mode meanwhile and set back afterwards."""
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
