"""Host-side video clips: frames (PIL images) -> the tower's square tensors and the clip's LM width.

LLaVA-NeXT / OneVision video data has one `<image>` stand for a whole clip (`"video": [frame
paths]`). Every frame goes through the tower's own square transform (OneVision reads video at base
resolution, never tiled); the model pools each frame's features (`models.video_pool`) and writes the
frames' pooled tokens in order at the clip's placeholders. The width is frames x the model's pooled
tokens per frame (plus the tokens that end a clip, OneVision's newline), known here so truncation,
widening and packing count it without the device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import PIL.Image
import torch
from torch import Tensor


@dataclass(frozen=True)
class VideoClip:
    """`frames`: (F, 3, S, S) in order; `num_tokens`: the LM positions the model writes for the clip."""

    frames: Tensor
    num_tokens: int


class ClipTransform:
    """Frames -> `VideoClip`; `frame`: the tower's square transform; `frame_tokens`: LM positions of one
    pooled frame (the model's `frame_token_count`); `end_tokens`: positions after the last frame (1 with
    the model's `video_newline`). A plain class, so it pickles into DataLoader workers."""

    def __init__(self, frame: Callable[[PIL.Image.Image], Tensor], frame_tokens: int, end_tokens: int = 0) -> None:
        if frame_tokens < 1:
            raise ValueError(f"a video frame must take at least one LM position, got {frame_tokens}")
        self.frame, self.frame_tokens, self.end_tokens = frame, frame_tokens, end_tokens

    def width(self, frames: int) -> int:
        """LM positions of a clip of `frames` frames."""
        return frames * self.frame_tokens + self.end_tokens

    def __call__(self, frames: Sequence[PIL.Image.Image]) -> VideoClip:
        if not frames:
            raise ValueError("a video clip needs at least one frame")
        return VideoClip(torch.stack([self.frame(f) for f in frames]), self.width(len(frames)))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(frame={self.frame}, frame_tokens={self.frame_tokens}, "
                f"end_tokens={self.end_tokens})")
