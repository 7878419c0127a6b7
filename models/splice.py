"""Splicing image features into a token sequence that holds one `<image>` token per image.

LLaVA models no longer need it (their collators widen `<image>` on the host,
`data.image_placeholders`); it serves callers that pair their own feature rows with unwidened
ids (`scripts/probe_object_lookup.py`). Each `<image>` is widened to the N feature vectors, every
other token keeps width 1; new positions come from a cumulative sum of widths, so all rows are
filled with a few scatter ops and no per-sample Python loop. It reads the batch's widened length
on the host, so it syncs with the device.
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


def splice_image_features(
    input_ids: Tensor,
    text_embeds: Tensor,
    image_features: Tensor,
    image_token_id: int,
    attention_mask: Tensor,
    labels: Tensor | None = None,
) -> Spliced:
    """`image_features` (I, N, D) fill the I `<image>` tokens in row-major order; rows that come
    out shorter than the longest are padded on the right."""
    is_img = input_ids == image_token_id
    n_img = int(is_img.sum())
    if n_img != image_features.shape[0]:
        raise ValueError(f"batch has {n_img} <image> tokens but {image_features.shape[0]} images")
    B, L = input_ids.shape
    n_tok = image_features.shape[1]
    width = torch.where(is_img, n_tok, 1)
    end = width.cumsum(1)
    start = end - width
    T = int(end[:, -1].max())
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
    if n_img:
        img_rows = rows[is_img][:, None].expand(n_img, n_tok)
        img_pos = start[is_img][:, None] + torch.arange(n_tok, device=input_ids.device)
        embeds[img_rows, img_pos] = image_features.to(embeds.dtype)
        mask[img_rows, img_pos] = 1
    return Spliced(embeds, mask, out_labels)
