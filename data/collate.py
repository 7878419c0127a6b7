"""Batching: pad token rows, concatenate images in order, count and leave out unusable samples.

A dataset item is a dict, `Unreadable` or None (an image missing or corrupt, counted as
`skipped`; `Unreadable` also names the sample and the path, so a run that stops for too many can
say which) or `Dropped` (readable but untrainable: too long to fit without cutting an image, or no
target token left after truncation, counted as `dropped`). Both counts travel in every batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from data.image_placeholders import ImagePlaceholders
from data.tokenize import IGNORE_INDEX


@dataclass(frozen=True)
class Dropped:
    """An item left out on purpose; `sample` names it and `reason` says why (for debugging)."""

    sample: str
    reason: str


@dataclass(frozen=True)
class Unreadable:
    """An item whose image `path` is missing or cannot be decoded."""

    sample: str
    path: str


def usable(items: list) -> tuple[list[dict], dict]:
    """The dict items, and the batch's counts: `samples` in it, `skipped`, `dropped`, and the
    unreadable paths."""
    good = [it for it in items if isinstance(it, dict)]
    dropped = sum(isinstance(it, Dropped) for it in items)
    unreadable = [it.path for it in items if isinstance(it, Unreadable)]
    return good, {"skipped": len(items) - len(good) - dropped, "dropped": dropped, "unreadable": unreadable,
                  "samples": len(items)}


def pad_rows(rows: list[Tensor], value: int, left: bool) -> Tensor:
    out = torch.full((len(rows), max(len(r) for r in rows)), value, dtype=rows[0].dtype)
    for i, r in enumerate(rows):
        if left:
            out[i, out.shape[1] - len(r):] = r
        else:
            out[i, : len(r)] = r
    return out


def image_sizes(items: list[dict]) -> dict:
    """`image_sizes`: every image's (height, width) in the order the items hold them, as host ints
    (an any-resolution model unpads with them without reading the device); nothing without."""
    if not any("image_sizes" in it for it in items):
        return {}
    return {"image_sizes": [size for it in items for size in it.get("image_sizes", ())]}


def clip_frames(items: list[dict]) -> dict:
    """`clip_frames`: one host int per `<image>` of the items in order, the frames of the video clip
    it stands for, 0 for an image (the model pools a clip's frames and not an image's views); nothing
    when no item has a clip, so image-only batches are as before."""
    if not any("clip_frames" in it for it in items):
        return {}
    return {"clip_frames": [n for it in items for n in it.get("clip_frames") or [0] * images_of(it)]}


def images_of(item: dict) -> int:
    """How many images an item without a clip holds: one per size with any-resolution, else one per view."""
    if "image_sizes" in item:
        return len(item["image_sizes"])
    return 0 if item["pixel_values"] is None else item["pixel_values"].shape[0]


MEDIA_ARGUMENTS = ("image_sizes", "clip_frames")


def media_arguments(batch: dict) -> dict:
    """The host-side media values a batch carries for the model's forward and generate: any-resolution
    images' (height, width) and video clips' frame counts; nothing for a batch of square images."""
    return {k: batch[k] for k in MEDIA_ARGUMENTS if k in batch}


def count_targets(labels: Tensor) -> int:
    """How many positions the next-token loss averages over (labels after the first, not -100):
    counted here, on the host, so the training step weights by it without a device sync."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def widened(items: list[dict], placeholders: ImagePlaceholders | None) -> list[dict]:
    """The items with each `<image>` widened to its placeholders (`data.image_placeholders`; to each
    image's own width when the item has `image_widths`, any-resolution); as they are without (a
    model that does not read images from its sequence, e.g. Flamingo)."""
    if placeholders is None:
        return items
    out = []
    for it in items:
        ids, labels = placeholders.widen(it["input_ids"], it.get("labels"), it.get("image_widths"))
        out.append({**it, "input_ids": ids, **({} if labels is None else {"labels": labels})})
    return out


class Collator:
    """`left_pad` for generation prompts; right padding for training. `placeholders` (a LLaVA's
    `image_placeholders`): widen each `<image>` and add the placeholders' `image_positions`."""

    def __init__(self, pad_token_id: int, left_pad: bool = False,
                 placeholders: ImagePlaceholders | None = None) -> None:
        self.pad_token_id, self.left_pad, self.placeholders = pad_token_id, left_pad, placeholders

    def __call__(self, items: list) -> dict:
        good, batch = usable(items)
        if not good:
            return batch
        good = widened(good, self.placeholders)
        ids = [it["input_ids"] for it in good]
        batch["input_ids"] = pad_rows(ids, self.pad_token_id, self.left_pad)
        batch["attention_mask"] = pad_rows([torch.ones_like(r) for r in ids], 0, self.left_pad)
        if self.placeholders is not None:
            batch["image_positions"] = self.placeholders.positions(batch["input_ids"])
        if "labels" in good[0]:
            batch["labels"] = pad_rows([it["labels"] for it in good], IGNORE_INDEX, self.left_pad)
            batch["num_targets"] = count_targets(batch["labels"])
        pixels = [it["pixel_values"] for it in good if it["pixel_values"] is not None]
        batch["pixel_values"] = torch.cat(pixels) if pixels else None
        batch.update(image_sizes(good))
        batch.update(clip_frames(good))
        if "meta" in good[0]:
            batch["meta"] = [it["meta"] for it in good]
        return batch
