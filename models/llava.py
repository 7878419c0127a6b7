"""LLaVA composition: vision -> connector -> language model, image features written at `<image>` placeholders.

The collators widen each `<image>` to one placeholder per image feature and find their positions
on the host (`data.image_placeholders`, as transformers' LLaVA processor and nanoVLM do), so a
training step has fixed shapes, waits for the device nowhere and compiles as one graph.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from data.anyres_images import AnyResTransform
from data.image_placeholders import ImagePlaceholders
from data.video_frames import ClipTransform
from models.anyres import AnyResLayout, ImageNewline, Size
from models.connectors import Connector, MLPConnector
from models.language import LanguageModel
from models.losses import chunked_next_token_loss, next_token_loss, summed_label_logprobs
from models.sample_attention import sample_causal_mask, segment_positions
from models.video_pool import POOL_MODES, PoolMode, pool_frames, pooled_side
from models.vision import VisionEncoder, encode_without_frozen_graph


NEEDS_SIZES = "an any-resolution LLaVA needs each image's (height, width) (image_sizes)"


class LLaVA(nn.Module):
    """`connector` is a factory called with (vision dim, LM width), so configs never repeat dims.

    `loss_chunk_size`: compute the training loss this many positions at a time without
    materialising full-vocabulary logits (`models.losses`); the forward then returns no logits.

    `image_grid_pinpoints`: LLaVA-NeXT any-resolution (`models.anyres`): candidate (height, width)
    canvases, multiples of the tower's side; each image is then a base view plus tiles and takes
    a number of LM positions that depends on its size (`image_token_count`). `anyres_max_tiles`:
    OneVision's `anyres_max_N`. Without pinpoints this is LLaVA-1.5: one view, fixed width.

    Several `<image>` per sample are read in order, one image each; an `<image>` may stand for a
    video clip instead (`clip_frames`): its frames go through the tower at base resolution and each
    frame's feature grid is pooled `video_pool` per side (`video_pool_mode`, `models.video_pool`;
    1: none), as LLaVA-OneVision does, and the frames' tokens are written in order. `video_newline`:
    the clip's tokens end with the learned `image_newline` (OneVision's layout; one more position).
    """

    def __init__(
        self,
        vision: VisionEncoder,
        language: LanguageModel,
        connector: Callable[[int, int], Connector] = MLPConnector,
        loss_chunk_size: int | None = None,
        image_grid_pinpoints: list[tuple[int, int]] | None = None,
        anyres_max_tiles: int | None = None,
        video_pool: int = 2,
        video_pool_mode: PoolMode = "bilinear",
        video_newline: bool = False,
    ) -> None:
        super().__init__()
        self.vision = vision
        self.language = language
        self.connector = connector(vision.dim, language.hidden_size)
        self.loss_chunk_size = loss_chunk_size
        self.anyres = None
        if image_grid_pinpoints is not None:
            self.anyres = anyres_layout(vision, self.connector, image_grid_pinpoints, anyres_max_tiles)
            self.image_newline = ImageNewline(language.hidden_size)
        elif anyres_max_tiles is not None:
            raise ValueError("anyres_max_tiles needs image_grid_pinpoints (any-resolution is off without them)")
        if video_pool < 1:
            raise ValueError(f"video_pool must be >= 1 (1: frames are not pooled), got {video_pool}")
        if video_pool_mode not in POOL_MODES:
            raise ValueError(f"video_pool_mode {video_pool_mode!r} unknown; choose one of {list(POOL_MODES)}")
        self.video_pool, self.video_pool_mode = video_pool, video_pool_mode
        self.video_newline = video_newline
        if video_newline and self.anyres is None:
            self.image_newline = ImageNewline(language.hidden_size)

    @property
    def tokenizer(self):
        return self.language.tokenizer

    @property
    def num_image_tokens(self) -> int:
        """LM positions of one view (an image without any-resolution; its base view with it)."""
        return self.connector.num_tokens(self.vision.num_patches)

    @property
    def image_placeholders(self) -> ImagePlaceholders:
        """How the data side widens each `<image>` for this model: the one source of that width."""
        return ImagePlaceholders(self.language.image_token_id, self.num_image_tokens)

    def image_transform(self, train: bool = False):
        """PIL image -> the model's input for it: the tower's square tensor, or with any-resolution
        an `AnyResImage` (base view + tiles, size, token count; `data.anyres_images`)."""
        base = self.vision.transform(train=train)
        return base if self.anyres is None else AnyResTransform(self.anyres, base)

    @property
    def frame_token_count(self) -> int | None:
        """LM positions of one video frame: a view's tokens, pooled `video_pool` per side of their grid;
        None when they are no square grid to pool (e.g. a Q-Former's queries with video_pool > 1)."""
        if self.video_pool == 1:
            return self.num_image_tokens
        side = math.isqrt(self.num_image_tokens)
        return pooled_side(side, self.video_pool, self.video_pool_mode) ** 2 if side * side == self.num_image_tokens \
            else None

    def clip_transform(self, train: bool = False) -> ClipTransform | None:
        """Video frames (PIL images) -> a `VideoClip`: each frame by the tower's square transform (base
        resolution also with any-resolution, as OneVision reads video), and the clip's LM width;
        None when this model reads no clips (`frame_token_count`)."""
        if self.frame_token_count is None:
            return None
        return ClipTransform(self.vision.transform(train=train), self.frame_token_count, int(self.video_newline))

    def image_token_count(self, size: Size | None = None) -> int:
        """LM positions one image takes: fixed, or with any-resolution from its (height, width)."""
        if self.anyres is None:
            return self.num_image_tokens
        if size is None:
            raise ValueError(NEEDS_SIZES)
        return self.anyres.num_tokens(size)

    def media_spans(self, views: int, image_sizes: list[Size] | None = None,
                    clip_frames: list[int] | None = None) -> list[tuple[int, int]]:
        """(tower views, LM positions) of each `<image>` of a batch of `views` views, in reading order,
        from host values only: an image (one view, or with any-resolution its base and tiles) or a
        clip of `clip_frames[k]` frames (0: an image)."""
        if clip_frames is None:
            clip_frames = [0] * (views if self.anyres is None else len(image_sizes or [None]))
        sizes = iter(image_sizes or ())
        spans = []
        for frames in clip_frames:
            if frames:
                if self.frame_token_count is None:
                    raise ValueError(f"video_pool {self.video_pool} pools frames on a square grid, but a view takes "
                                     f"{self.num_image_tokens} connector tokens: use video_pool: 1")
                spans.append((frames, frames * self.frame_token_count + int(self.video_newline)))
            elif self.anyres is None:
                spans.append((1, self.num_image_tokens))
            else:
                size = next(sizes, None)
                if size is None:
                    raise ValueError(NEEDS_SIZES)
                spans.append((self.anyres.num_views(size), self.anyres.num_tokens(size)))
        return spans

    def encode_images(self, pixel_values: Tensor) -> Tensor:
        """(V, 3, H, W) -> (V, M, D) LM-space features of each view; no graph through a frozen tower."""
        return self.connector(encode_without_frozen_graph(self.vision, pixel_values))

    def image_embeddings(self, pixel_values: Tensor, image_sizes: list[Size] | None = None,
                         clip_frames: list[int] | None = None) -> Tensor:
        """(P, D) the images' and clips' LM positions in reading order. Without any-resolution or clips a
        view is an image (P = V x M); else `media_spans` says which views are whose: an any-resolution
        image's tiles are unpadded (`AnyResLayout.pack`), a clip's frames pooled (`models.video_pool`)."""
        features = self.encode_images(pixel_values)
        if self.anyres is None and clip_frames is None:
            return features.flatten(0, 1)
        spans = self.media_spans(features.shape[0], image_sizes, clip_frames)
        counts = [views for views, _ in spans]
        if sum(counts) != features.shape[0]:
            raise ValueError(f"{features.shape[0]} image views for images of sizes {image_sizes} and clips of "
                             f"{clip_frames} frames, which take {counts} views: transform images with this "
                             f"model's image_transform and clips with its clip_transform")
        sizes = iter(image_sizes or ())
        out = []
        for frames, views in zip(clip_frames or [0] * len(spans), features.split(counts)):
            if frames:
                out.append(pool_frames(views, self.video_pool, self.video_pool_mode).flatten(0, 1))
                if self.video_newline:
                    out.append(self.image_newline.weight.to(views.dtype)[None])
            elif self.anyres is None:
                out.append(views.flatten(0, 1))
            else:
                out.append(self.anyres.pack(views, next(sizes), self.image_newline.weight))
        return torch.cat(out)

    def embed(self, input_ids: Tensor, pixel_values: Tensor | None, image_positions: Tensor | None = None,
              image_sizes: list[Size] | None = None, clip_frames: list[int] | None = None) -> Tensor:
        """(B, T, D) token embeddings with the images' features written at their placeholders.

        `image_positions` (`ImagePlaceholders.positions`): collators find them on the host, so a
        step never waits for the device; without them they are found here (one host sync).
        `image_sizes`: each image's (height, width) as host ints, for any-resolution; `clip_frames`:
        per `<image>`, the frames of the video clip it stands for (0: an image), host ints.
        """
        text = self.language.embed(input_ids)
        if image_positions is None:
            image_positions = self.image_placeholders.positions(input_ids)
        spans = [] if pixel_values is None else self.media_spans(pixel_values.shape[0], image_sizes, clip_frames)
        widths = [width for _, width in spans]
        of = f"{self.num_image_tokens} tokens"
        if self.anyres is not None or clip_frames is not None:
            of = f"{widths} tokens" + (" (any-resolution)" if self.anyres is not None else "")
        if image_positions.shape[0] != sum(widths):
            raise ValueError(f"the batch has {image_positions.shape[0]} <image> placeholders for {len(spans)} images "
                             f"of {of}: collate with this model's image_placeholders")
        if pixel_values is None:
            return text
        images = self.image_embeddings(pixel_values, image_sizes, clip_frames).to(text.dtype)
        return text.flatten(0, 1).index_copy(0, image_positions, images).view_as(text)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, pixel_values: Tensor | None = None,
                labels: Tensor | None = None, segment_ids: Tensor | None = None,
                image_positions: Tensor | None = None, image_sizes: list[Size] | None = None,
                clip_frames: list[int] | None = None) -> tuple[Tensor | None, Tensor | None]:
        """Returns (logits, loss); the loss is next-token CE over positions whose label is not -100.

        `segment_ids` marks packed rows (`data.packing`): attention stays inside each sample and
        positions restart at each; an unpacked row is one sample after its padding (either side).
        """
        embeds = self.embed(input_ids, pixel_values, image_positions, image_sizes, clip_frames)
        segments = attention_mask.long() - 1 if segment_ids is None else segment_ids
        mask = sample_causal_mask(self.language.model.config, embeds, segments)
        positions = segment_positions(segments)
        if self.loss_chunk_size is not None and labels is not None:
            hidden = self.language.hidden_states(embeds, mask, positions)
            return None, chunked_next_token_loss(hidden, self.language.output_head, labels, self.loss_chunk_size)
        logits = self.language(embeds, mask, positions)
        return logits, None if labels is None else next_token_loss(logits, labels)

    def sequence_logprobs(self, input_ids: Tensor, attention_mask: Tensor, pixel_values: Tensor | None,
                          labels: Tensor, image_positions: Tensor | None = None) -> Tensor:
        """(B,) sum of log p(label token) over each row's labelled positions (DPO's policy terms)."""
        logits, _ = self(input_ids, attention_mask, pixel_values, image_positions=image_positions)
        return summed_label_logprobs(logits, labels)

    @torch.no_grad()
    def generate(self, input_ids: Tensor, attention_mask: Tensor, pixel_values: Tensor | None = None,
                 max_new_tokens: int = 16, image_sizes: list[Size] | None = None,
                 clip_frames: list[int] | None = None, **kwargs) -> Tensor:
        """Greedy by default; prompts (`<image>` widened) must be left-padded. Returns only the new token ids."""
        embeds = self.embed(input_ids, pixel_values, image_sizes=image_sizes, clip_frames=clip_frames)
        tok = self.tokenizer
        kwargs = {"do_sample": False, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id, **kwargs}
        return self.language.model.generate(
            inputs_embeds=embeds, attention_mask=attention_mask, max_new_tokens=max_new_tokens, **kwargs
        )


def anyres_layout(vision: VisionEncoder, connector: Connector, pinpoints: list[tuple[int, int]],
                  max_tiles: int | None) -> AnyResLayout:
    """The any-resolution layout of this tower; the connector must keep the tower's square patch
    grid (one token per patch, e.g. mlp2x_gelu), since tiles are stitched on that grid."""
    side = math.isqrt(vision.num_patches)
    if side * side != vision.num_patches or connector.num_tokens(vision.num_patches) != vision.num_patches:
        raise ValueError(f"image_grid_pinpoints: any-resolution stitches tiles on the tower's square patch grid; "
                         f"{vision.num_patches} patches -> {connector.num_tokens(vision.num_patches)} connector "
                         f"tokens is not one token per patch of a square grid")
    return AnyResLayout(vision.image_size, side, tuple(tuple(p) for p in pinpoints), max_tiles)
