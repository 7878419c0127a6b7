"""Causal attention inside each sample of a row, and positions counted per sample, with no host sync.

A row holds samples numbered by `segment_ids` (-1 on padding): several when packed
(`data.packing`), one when padded (segments = attention_mask - 1, either side). Left to itself,
transformers reads device values on the host every forward (is the batch packed? is there any
padding?), and `torch.compile` breaks there. Here the mask is built with transformers' own mask
functions in the attention implementation's format (sdpa, eager, flex), so nothing is read back;
flash-attention takes no mask and keeps its varlen path from the restarting position ids.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import PretrainedConfig
from transformers.masking_utils import create_causal_mask, packed_sequence_mask_function


def segment_positions(segments: Tensor) -> Tensor:
    """(B, T) sample index per position -> position within its sample (0 where a segment starts)."""
    idx = torch.arange(segments.shape[1], device=segments.device).expand_as(segments)
    starts = torch.ones_like(segments, dtype=torch.bool)
    starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
    return idx - torch.where(starts, idx, 0).cummax(1).values


def sample_causal_mask(config: PretrainedConfig, inputs_embeds: Tensor, segment_ids: Tensor):
    """Causal attention restricted to positions of the same segment (padding, -1, attends only to
    padding, so no row is empty); None where the implementation takes no mask (flash-attention)."""
    return create_causal_mask(config=config, inputs_embeds=inputs_embeds, attention_mask=None, cache=None,
                              and_mask_function=packed_sequence_mask_function(segment_ids))
