"""Host-side any-resolution images: a PIL image -> its base view and tiles, its size and its token count.

The model's `AnyResLayout` (`models.anyres`) decides the canvas and the token count from the
image's (height, width); this module cuts the pixels to match, as LLaVA-NeXT's processor does:
resize to fit the canvas with the aspect ratio kept (bicubic), paste centred on a black canvas,
cut it into tower-sized tiles row by row. The base view is the tower's own transform of the
whole image. A dataset item then carries all views, the (height, width) per image (for unpadding)
and the LM positions per image (for widening `<image>`, packing and the token budget).
"""

from __future__ import annotations

from dataclasses import dataclass

import PIL.Image
import torch
import torchvision.transforms.functional as TF
from torch import Tensor
from torchvision.transforms import InterpolationMode

from data.video_frames import VideoClip
from models.anyres import AnyResLayout, Size, fitted_size
from models.image_transform import ImageTransform


@dataclass(frozen=True)
class AnyResImage:
    """`views`: (1 + tiles, 3, S, S), base view first; `size`: the image's (height, width);
    `num_tokens`: the LM positions the model writes for it."""

    views: Tensor
    size: Size
    num_tokens: int


class AnyResTransform:
    """PIL image -> `AnyResImage` for a model's layout; `base`: the tower's square transform (its
    mean and std normalise the tiles too). A plain class, so it pickles into DataLoader workers."""

    def __init__(self, layout: AnyResLayout, base: ImageTransform) -> None:
        if base.size != layout.tile_size:
            raise ValueError(f"the base transform's size {base.size} is not the tower's tile size {layout.tile_size}")
        self.layout, self.base = layout, base

    def tiles(self, image: PIL.Image.Image) -> Tensor:
        """(rows x cols, 3, S, S) normalised tiles of the image fitted and padded to its canvas."""
        size = (image.height, image.width)
        canvas_h, canvas_w = self.layout.canvas(size)
        fit_h, fit_w = fitted_size(size, (canvas_h, canvas_w))
        resized = TF.resize(image, [fit_h, fit_w], interpolation=InterpolationMode.BICUBIC, antialias=True)
        canvas = PIL.Image.new("RGB", (canvas_w, canvas_h), (0, 0, 0))
        canvas.paste(resized, ((canvas_w - fit_w) // 2, (canvas_h - fit_h) // 2))
        pixels = TF.normalize(TF.to_tensor(canvas), self.base.mean, self.base.std)
        s = self.layout.tile_size
        # (3, R*S, C*S) -> (R*C, 3, S, S), row-major
        return pixels.unflatten(1, (canvas_h // s, s)).unflatten(3, (canvas_w // s, s)).permute(1, 3, 0, 2, 4).flatten(0, 1)

    def __call__(self, image: PIL.Image.Image) -> AnyResImage:
        image = image.convert("RGB")
        size = (image.height, image.width)
        views = torch.cat([self.base(image)[None], self.tiles(image)])
        return AnyResImage(views, size, self.layout.num_tokens(size))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layout={self.layout}, base={self.base})"


def image_fields(images: list) -> dict:
    """A sample's media entries from its transformed media: `pixel_values` (square tensors stacked,
    any-resolution views or a clip's frames concatenated), for any-resolution `image_sizes`, and
    `image_widths` (LM positions per `<image>`) where they are not the model's one fixed width;
    a video clip (`data.video_frames`, one per sample) adds `clip_frames`, its frame count."""
    if not images:
        return {"pixel_values": None}
    if isinstance(images[0], VideoClip):
        (clip,) = images
        return {"pixel_values": clip.frames, "image_widths": [clip.num_tokens], "clip_frames": [clip.frames.shape[0]]}
    if not isinstance(images[0], AnyResImage):
        return {"pixel_values": torch.stack(images)}
    return {"pixel_values": torch.cat([im.views for im in images]), "image_sizes": [im.size for im in images],
            "image_widths": [im.num_tokens for im in images]}
