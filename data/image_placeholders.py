"""Each `<image>` widened to one placeholder per image feature vector, on the host, before the model runs.

A LLaVA reads an image as `width` feature vectors in its token sequence. Collators write `width`
copies of the `<image>` id where the text has one (what transformers' LLaVA processor does), so every
row's length is known before the model runs, and find the placeholders' positions on the host: the
model then writes the image features there with one index copy, with no host-device sync and no
data-dependent shape (`torch.compile` traces the step whole). The model defines the placeholders
(`LLaVA.image_placeholders`); the data side only takes them from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from data.tokenize import IGNORE_INDEX


@dataclass(frozen=True)
class ImagePlaceholders:
    """`token_id`: the `<image>` id; `width`: the LM positions one image takes (the model's image tokens)."""

    token_id: int
    width: int

    def __post_init__(self) -> None:
        if self.width < 1:
            raise ValueError(f"an image must take at least one LM position, got width {self.width}")

    def widen(self, input_ids: Tensor, labels: Tensor | None = None,
              widths: list[int] | None = None) -> tuple[Tensor, Tensor | None]:
        """A 1-D row with each `<image>` repeated `width` times; labels repeated alike and
        IGNORE_INDEX on every placeholder (an image position is never a target).

        `widths`: one per `<image>` in reading order, where images take different numbers of
        positions (any-resolution, `data.anyres_images`); they replace `width`."""
        is_image = input_ids == self.token_id
        if widths is None:
            widths = torch.where(is_image, self.width, 1)
        else:
            if len(widths) != int(is_image.sum()):
                raise ValueError(f"{len(widths)} image widths for {int(is_image.sum())} <image> tokens")
            widths = torch.ones_like(input_ids).masked_scatter(is_image, torch.as_tensor(widths, dtype=input_ids.dtype))
        ids = input_ids.repeat_interleave(widths)
        if labels is None:
            return ids, None
        return ids, labels.repeat_interleave(widths).masked_fill(ids == self.token_id, IGNORE_INDEX)

    def positions(self, input_ids: Tensor) -> Tensor:
        """(P,) flat positions of the placeholders in `input_ids.flatten()`, in reading order: where
        the model writes the P = images x width feature vectors. A host op on a CPU batch; on a
        device tensor it waits for the device (the model does this only when not given them)."""
        return (input_ids.flatten() == self.token_id).nonzero().squeeze(1)
