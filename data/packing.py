"""Sequence packing: several conversations per row, each attending only to itself.

Why: instruction data is mostly short answers with a few long samples (LLaVA's mix), so a
padded batch spends most of its compute on padding. A step still takes the same samples
(the loss is the same mean over the same target tokens); they are packed first-fit
decreasing into rows of at most `max_length` LM positions, after each `<image>` is widened to its
placeholders (`data.image_placeholders`), so a row's length is its length on the device. Each
token carries its sample's index in the row (`segment_ids`, -1 on padding); the model restarts
position ids there and keeps attention inside each sample (`models.packed_attention`).
"""

from __future__ import annotations

import torch

from data.collate import clip_frames, count_targets, image_sizes, pad_rows, usable, widened
from data.image_placeholders import ImagePlaceholders
from data.tokenize import IGNORE_INDEX


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins of item indices, each summing to at most `capacity` (an item longer than it gets a bin of its own)."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins


class PackingCollator:
    """Training batches of packed rows: `input_ids`, `labels`, `attention_mask`, `segment_ids`,
    `image_positions`, `pixel_values` in the order the rows mention their images (and their
    `image_sizes` and `clip_frames`, as `data.collate` gives them)."""

    def __init__(self, pad_token_id: int, placeholders: ImagePlaceholders, max_length: int) -> None:
        if max_length < 1:
            raise ValueError(f"packing max_length must be positive, got {max_length}")
        self.pad_token_id, self.placeholders, self.max_length = pad_token_id, placeholders, max_length

    def __call__(self, items: list) -> dict:
        good, batch = usable(items)
        if not good:
            return batch
        good = widened(good, self.placeholders)
        bins = first_fit_decreasing([len(it["input_ids"]) for it in good], self.max_length)
        ids, labels, segments, pixels, in_order = [], [], [], [], []
        for members in bins:
            row = [good[i] for i in members]
            in_order += row
            ids.append(torch.cat([it["input_ids"] for it in row]))
            # a sample's first token is never a target unpacked; packed, the previous sample's
            # last position would predict it, so it is masked
            labels.append(torch.cat([torch.cat([it["labels"].new_tensor([IGNORE_INDEX]), it["labels"][1:]])
                                     for it in row]))
            segments.append(torch.cat([torch.full_like(it["input_ids"], k) for k, it in enumerate(row)]))
            pixels += [it["pixel_values"] for it in row if it["pixel_values"] is not None]
        batch["input_ids"] = pad_rows(ids, self.pad_token_id, left=False)
        batch["attention_mask"] = pad_rows([torch.ones_like(r) for r in ids], 0, left=False)
        batch["image_positions"] = self.placeholders.positions(batch["input_ids"])
        batch["labels"] = pad_rows(labels, IGNORE_INDEX, left=False)
        batch["num_targets"] = count_targets(batch["labels"])
        batch["segment_ids"] = pad_rows(segments, -1, left=False)
        batch["pixel_values"] = torch.cat(pixels) if pixels else None
        batch.update(image_sizes(in_order))
        batch.update(clip_frames(in_order))
        return batch
