"""Per-frame spatial pooling of video features (LLaVA-OneVision's `get_2dPool`).

A clip is read as several frames through the same tower and connector as an image; each frame's
square grid of features is then shrunk by `stride` per side, so a clip of many frames costs about
as many LM positions as a few images. `bilinear` (OneVision's `mm_spatial_pool_mode`, and what
transformers' `LlavaOnevision.apply_pooling` does) resizes a side s to ceil(s / stride); `average`
(`avg_pool2d`) keeps floor(s / stride) and drops a ragged last row and column. The token count is
integer arithmetic on the grid side, so the data side knows a clip's width on the host.
"""

from __future__ import annotations

import math
from typing import Literal

from torch import Tensor
from torch.nn import functional as F

PoolMode = Literal["bilinear", "average"]
POOL_MODES = ("bilinear", "average")


def pooled_side(side: int, stride: int, mode: PoolMode) -> int:
    """A `side`-long grid side after pooling by `stride` (1: unchanged)."""
    if stride == 1:
        return side
    return math.ceil(side / stride) if mode == "bilinear" else side // stride


def pool_frames(features: Tensor, stride: int, mode: PoolMode) -> Tensor:
    """(F, side**2, D) row-major frame features -> (F, pooled_side**2, D), each frame pooled alone."""
    if stride == 1:
        return features
    frames, tokens, dim = features.shape
    side = math.isqrt(tokens)
    grid = features.view(frames, side, side, dim).permute(0, 3, 1, 2)
    if mode == "bilinear":
        out = pooled_side(side, stride, mode)
        grid = F.interpolate(grid, size=[out, out], mode="bilinear")
    else:
        grid = F.avg_pool2d(grid, stride)
    return grid.permute(0, 2, 3, 1).flatten(1, 2)
