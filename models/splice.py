"""Vectorised splicing of image features into a token sequence at `<image>` positions.

Each `<image>` token is widened to the N image feature vectors; every other token keeps
width 1. New positions come from a cumulative sum of widths, so all rows are filled with
a few scatter ops and no per-sample Python loop (LLaVA loops over the batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Spliced:
    embeds: Tensor  # (B, T, D)
    attention_mask: Tensor  # (B, T)
    labels: Tensor | None  # (B, T); -100 on image positions and padding
    position_ids: Tensor | None = None  # (B, T) restarting at each packed sample; None unpacked


def segment_positions(segments: Tensor) -> Tensor:
    """(B, T) sample index per position -> position within its sample (0 where a segment starts)."""
    idx = torch.arange(segments.shape[1], device=segments.device).expand_as(segments)
    starts = torch.ones_like(segments, dtype=torch.bool)
    starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
    return idx - torch.where(starts, idx, 0).cummax(1).values


def splice_image_features(
    input_ids: Tensor,
    text_embeds: Tensor,
    image_features: Tensor,
    image_token_id: int,
    attention_mask: Tensor,
    labels: Tensor | None = None,
    left_pad: bool = False,
    segment_ids: Tensor | None = None,
) -> Spliced:
    """`image_features` (I, N, D) fill the I `<image>` tokens in row-major order.

    Rows that come out shorter than the longest are padded on the right, or on the left
    with `left_pad` (what batched generation needs). `segment_ids` (B, L) number the samples
    packed into each row (padding -1); the result then carries per-sample `position_ids`,
    image positions counted in their sample.
    """
    is_img = input_ids == image_token_id
    n_img = int(is_img.sum())
    if n_img != image_features.shape[0]:
        raise ValueError(f"batch has {n_img} <image> tokens but {image_features.shape[0]} images")
    B, L = input_ids.shape
    n_tok = image_features.shape[1]
    width = torch.where(is_img, n_tok, 1)
    end = width.cumsum(1)
    start = end - width
    row_len = end[:, -1]
    T = int(row_len.max())
    if left_pad:
        start = start + (T - row_len)[:, None]
    D = text_embeds.shape[-1]
    embeds = text_embeds.new_zeros(B, T, D)
    mask = attention_mask.new_zeros(B, T)
    rows = torch.arange(B, device=input_ids.device)[:, None].expand(B, L)
    txt = ~is_img
    embeds[rows[txt], start[txt]] = text_embeds[txt]
    mask[rows[txt], start[txt]] = attention_mask[txt]
    out_labels = None
    if labels is not None:
        out_labels = labels.new_full((B, T), -100)
        out_labels[rows[txt], start[txt]] = labels[txt]
    segments = None
    if segment_ids is not None:
        segments = segment_ids.new_full((B, T), -1)
        segments[rows[txt], start[txt]] = segment_ids[txt]
    if n_img:
        img_rows = rows[is_img][:, None].expand(n_img, n_tok)
        img_pos = start[is_img][:, None] + torch.arange(n_tok, device=input_ids.device)
        embeds[img_rows, img_pos] = image_features.to(embeds.dtype)
        mask[img_rows, img_pos] = 1
        if segments is not None:
            segments[img_rows, img_pos] = segment_ids[is_img][:, None].expand(n_img, n_tok)
    positions = None if segments is None else segment_positions(segments)
    return Spliced(embeds, mask, out_labels, positions)
