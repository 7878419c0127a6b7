"""PIL image -> normalised square tensor, in one of three modes shared by training, eval, generate and export.

- `resize`: squash the whole image to a square (nothing cut, aspect ratio lost); the tiny worlds'.
- `pad`: LLaVA-1.5's `image_aspect_ratio: pad`: paste the image centred on a square of the mean
  colour (`expand2square(img, tuple(int(x * 255) for x in image_mean))`), then resize.
- `crop`: CLIP's own preprocessing: shortest side to `size`, then the centre square.

Resizing is PIL bicubic on 8-bit pixels (what LLaVA's `CLIPImageProcessor` did), so a
transformers `LlavaImageProcessor` with the PIL backend reproduces these tensors
(`models.hf_image_processor`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import PIL.Image
import torchvision.transforms.functional as TF
from torch import Tensor
from torchvision.transforms import InterpolationMode

ImageMode = Literal["resize", "pad", "crop"]
IMAGE_MODES: tuple[str, ...] = get_args(ImageMode)


def pad_colour(mean: Sequence[float]) -> tuple[int, ...]:
    """LLaVA-1.5's background: the normalisation mean as 8-bit values, truncated as it does."""
    return tuple(int(m * 255) for m in mean)


def expand_to_square(image: PIL.Image.Image, colour: tuple[int, ...]) -> PIL.Image.Image:
    """The image centred on a square canvas of `colour` (LLaVA's `expand2square`)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = PIL.Image.new(image.mode, (side, side), colour)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def centre_crop(image: PIL.Image.Image, size: int) -> PIL.Image.Image:
    """The centre `size` square, offsets rounded down (as transformers' image processors do)."""
    width, height = image.size
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))


class ImageTransform:
    """PIL image -> normalised `(3, size, size)` tensor.

    A plain class rather than a `transforms.Compose` with lambdas, so it pickles into DataLoader
    worker processes. No flips or random crops: answers about position ("left of") must hold.
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], mode: ImageMode = "resize") -> None:
        if mode not in IMAGE_MODES:
            raise ValueError(f"image mode {mode!r} unknown; choose one of {list(IMAGE_MODES)}")
        self.size = int(size)
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        self.mode = mode

    def __call__(self, image: PIL.Image.Image) -> Tensor:
        image = image.convert("RGB")
        if self.mode == "pad":
            image = expand_to_square(image, pad_colour(self.mean))
        if self.mode == "crop":
            image = TF.resize(image, self.size, interpolation=InterpolationMode.BICUBIC, antialias=True)
            image = centre_crop(image, self.size)
        else:
            image = TF.resize(image, [self.size, self.size], interpolation=InterpolationMode.BICUBIC, antialias=True)
        return TF.normalize(TF.to_tensor(image), self.mean, self.std)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, mean={self.mean}, std={self.std}, mode={self.mode!r})"

    def to_dict(self) -> dict:
        """The settings as data, for a release's image_processing.json: what another stack needs
        to feed the tower the pixels it was trained on."""
        out = {"size": self.size, "mean": self.mean, "std": self.std, "mode": self.mode,
               "resize": "shortest_side" if self.mode == "crop" else "squash",
               "interpolation": "bicubic", "antialias": True, "convert": "RGB", "rescale": 1 / 255}
        if self.mode == "pad":
            out["pad_colour"] = list(pad_colour(self.mean))
        if self.mode == "crop":
            out["crop"] = "centre"
        return out
