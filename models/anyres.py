"""LLaVA-NeXT any-resolution: an image read as a resized base view plus a grid of full-resolution tiles.

Each image picks the candidate resolution (`grid_pinpoints`, (height, width) pixels, multiples of
the tower's side) that keeps the most of its pixels and wastes the least canvas; it is resized to
fit that canvas (aspect kept), padded centred, and cut into tower-sized tiles; the base view is the
whole image at the tower's side. The tower reads base + tiles as one batch. The tiles' features are
stitched back into one feature map, the padding is cropped away again (unpadding, so the map has
the image's aspect ratio), OneVision's `anyres_max_N` shrinks a map larger than N tiles
bilinearly, and a learned `image_newline` ends every row. Every size here is plain integer
arithmetic on the image's (height, width), so the data side computes each image's token count on
the host, equal to what `AnyResLayout.pack` writes (no host-device sync in a step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

Size = tuple[int, int]  # (height, width)

# OneVision shrinks a map only when it is more than this factor (per side) over the cap
_CAP_SLACK = 1.1


def select_best_resolution(size: Size, pinpoints: list[Size]) -> Size:
    """The (height, width) canvas among `pinpoints` that keeps the most of the image's pixels
    after an aspect-preserving fit, then wastes the least canvas; ties go to the earlier
    candidate (LLaVA-NeXT's `select_best_resolution`)."""
    height, width = size
    best, best_effective, best_waste = None, 0, math.inf
    for cand_h, cand_w in pinpoints:
        scale = min(cand_w / width, cand_h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        waste = cand_w * cand_h - effective
        if effective > best_effective or (effective == best_effective and waste < best_waste):
            best, best_effective, best_waste = (cand_h, cand_w), effective, waste
    return best


def fitted_size(size: Size, canvas: Size) -> Size:
    """The image's (height, width) resized to fit inside `canvas` with its aspect ratio (the longer
    relative side fills the canvas, the other rounds up), as LLaVA-NeXT's processor resizes."""
    (height, width), (canvas_h, canvas_w) = size, canvas
    scale_h, scale_w = canvas_h / height, canvas_w / width
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), canvas_h), canvas_w
    return canvas_h, min(math.ceil(width * scale_h), canvas_w)


def unpadded_window(size: Size, grid: Size) -> tuple[slice, slice]:
    """(rows, cols) of a `grid`-shaped feature map of the padded canvas that hold the image of
    `size` (height, width): the centred padding is cropped (LLaVA-NeXT's `unpad_image`)."""
    (height, width), (rows, cols) = size, grid
    if width / height > cols / rows:  # wider than the map: padding above and below
        pad = (rows - int(round(height * (cols / width), 7))) // 2
        return slice(pad, rows - pad), slice(0, cols)
    pad = (cols - int(round(width * (rows / height), 7))) // 2
    return slice(0, rows), slice(pad, cols - pad)


def capped_grid(rows: int, cols: int, max_tiles: int | None, tile_side: int) -> Size:
    """OneVision's `anyres_max_N`: a map of more than N tiles' features (by more than 1.1 per side)
    shrinks by the same factor on both sides to about N tiles' worth; otherwise it is kept."""
    if max_tiles is None:
        return rows, cols
    ratio = math.sqrt(rows * cols / (max_tiles * tile_side**2))
    if ratio <= _CAP_SLACK:
        return rows, cols
    return int(rows // ratio), int(cols // ratio)


@dataclass(frozen=True)
class AnyResLayout:
    """`tile_size`: the tower's input side in pixels; `patch_side`: its feature grid side (features
    per tile = patch_side**2); `grid_pinpoints`: candidate (height, width) canvases in pixels;
    `max_tiles`: OneVision's N of `anyres_max_N` (None: no cap, LLaVA-NeXT)."""

    tile_size: int
    patch_side: int
    grid_pinpoints: tuple[Size, ...]
    max_tiles: int | None = None

    def __post_init__(self) -> None:
        if not self.grid_pinpoints:
            raise ValueError("image_grid_pinpoints is empty: give at least one (height, width) canvas")
        bad = [p for p in self.grid_pinpoints if len(p) != 2 or p[0] % self.tile_size or p[1] % self.tile_size
               or min(p) <= 0]
        if bad:
            raise ValueError(f"image_grid_pinpoints {bad} are not positive (height, width) multiples of the "
                             f"tower's image size {self.tile_size}")
        if self.max_tiles is not None and self.max_tiles < 1:
            raise ValueError(f"anyres max_tiles must be >= 1, got {self.max_tiles}")
        object.__setattr__(self, "grid_pinpoints", tuple(tuple(int(v) for v in p) for p in self.grid_pinpoints))

    def canvas(self, size: Size) -> Size:
        """The (height, width) pixels the image's tiles cover."""
        return select_best_resolution(size, list(self.grid_pinpoints))

    def tile_grid(self, size: Size) -> Size:
        """(rows, cols) of tiles for an image of `size` (height, width)."""
        canvas_h, canvas_w = self.canvas(size)
        return canvas_h // self.tile_size, canvas_w // self.tile_size

    def num_views(self, size: Size) -> int:
        """Tower inputs for one image: the base view and its tiles."""
        rows, cols = self.tile_grid(size)
        return 1 + rows * cols

    def feature_grid(self, size: Size) -> Size:
        """(rows, cols) of the tile feature map after unpadding and the max-N cap (before newlines)."""
        tile_rows, tile_cols = self.tile_grid(size)
        r, c = unpadded_window(size, (tile_rows * self.patch_side, tile_cols * self.patch_side))
        return capped_grid(r.stop - r.start, c.stop - c.start, self.max_tiles, self.patch_side)

    def num_tokens(self, size: Size) -> int:
        """LM positions one image of `size` takes: base features, then each map row and its newline."""
        rows, cols = self.feature_grid(size)
        return self.patch_side**2 + rows * (cols + 1)

    def pack(self, views: Tensor, size: Size, newline: Tensor) -> Tensor:
        """(num_views, patch_side**2, D) features of one image's base view and tiles (row-major) ->
        (num_tokens, D): base features, then the unpadded (capped) tile map with `newline` (D,)
        after every row."""
        p, dim = self.patch_side, views.shape[-1]
        tile_rows, tile_cols = self.tile_grid(size)
        base, tiles = views[0], views[1:]
        grid = tiles.reshape(tile_rows, tile_cols, p, p, dim).permute(0, 2, 1, 3, 4)
        grid = grid.reshape(tile_rows * p, tile_cols * p, dim)
        rows, cols = unpadded_window(size, (tile_rows * p, tile_cols * p))
        grid = grid[rows, cols]
        target = capped_grid(grid.shape[0], grid.shape[1], self.max_tiles, p)
        if target != tuple(grid.shape[:2]):
            grid = F.interpolate(grid.permute(2, 0, 1)[None], list(target), mode="bilinear")[0].permute(1, 2, 0)
        ends = newline.to(grid.dtype).expand(grid.shape[0], 1, dim)
        return torch.cat([base, torch.cat([grid, ends], dim=1).flatten(0, 1)])


class ImageNewline(nn.Module):
    """The learned vector that ends each row of an any-resolution image's feature map; a module of
    its own so a stage trains it with the connector (`train.module.BRIDGE`)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(dim) / math.sqrt(dim))  # LLaVA-NeXT's init scale
