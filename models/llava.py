"""LLaVA composition: vision -> connector -> language model, image features written at `<image>` placeholders.

The collators widen each `<image>` to one placeholder per image feature and find their positions
on the host (`data.image_placeholders`, as transformers' LLaVA processor and nanoVLM do), so a
training step has fixed shapes, waits for the device nowhere and compiles as one graph.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from data.image_placeholders import ImagePlaceholders
from models.connectors import Connector, MLPConnector
from models.language import LanguageModel
from models.losses import chunked_next_token_loss, next_token_loss, summed_label_logprobs
from models.sample_attention import sample_causal_mask, segment_positions
from models.vision import VisionEncoder, encode_without_frozen_graph


class LLaVA(nn.Module):
    """`connector` is a factory called with (vision dim, LM width), so configs never repeat dims.

    `loss_chunk_size`: compute the training loss this many positions at a time without
    materialising full-vocabulary logits (`models.losses`); the forward then returns no logits.
    """

    def __init__(
        self,
        vision: VisionEncoder,
        language: LanguageModel,
        connector: Callable[[int, int], Connector] = MLPConnector,
        loss_chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        self.vision = vision
        self.language = language
        self.connector = connector(vision.dim, language.hidden_size)
        self.loss_chunk_size = loss_chunk_size

    @property
    def tokenizer(self):
        return self.language.tokenizer

    @property
    def num_image_tokens(self) -> int:
        return self.connector.num_tokens(self.vision.num_patches)

    @property
    def image_placeholders(self) -> ImagePlaceholders:
        """How the data side widens each `<image>` for this model: the one source of that width."""
        return ImagePlaceholders(self.language.image_token_id, self.num_image_tokens)

    def encode_images(self, pixel_values: Tensor) -> Tensor:
        """(I, 3, H, W) -> (I, M, D) LM-space image embeddings; no graph through a frozen tower."""
        return self.connector(encode_without_frozen_graph(self.vision, pixel_values))

    def embed(self, input_ids: Tensor, pixel_values: Tensor | None, image_positions: Tensor | None = None) -> Tensor:
        """(B, T, D) token embeddings with the images' features written at their placeholders.

        `image_positions` (`ImagePlaceholders.positions`): collators find them on the host, so a
        step never waits for the device; without them they are found here (one host sync).
        """
        text = self.language.embed(input_ids)
        if image_positions is None:
            image_positions = self.image_placeholders.positions(input_ids)
        n_images = 0 if pixel_values is None else pixel_values.shape[0]
        if image_positions.shape[0] != n_images * self.num_image_tokens:
            raise ValueError(f"the batch has {image_positions.shape[0]} <image> placeholders for {n_images} images of "
                             f"{self.num_image_tokens} tokens: collate with this model's image_placeholders")
        if n_images == 0:
            return text
        images = self.encode_images(pixel_values).to(text.dtype)
        return text.flatten(0, 1).index_copy(0, image_positions, images.flatten(0, 1)).view_as(text)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, pixel_values: Tensor | None = None,
                labels: Tensor | None = None, segment_ids: Tensor | None = None,
                image_positions: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
        """Returns (logits, loss); the loss is next-token CE over positions whose label is not -100.

        `segment_ids` marks packed rows (`data.packing`): attention stays inside each sample and
        positions restart at each; an unpacked row is one sample after its padding (either side).
        """
        embeds = self.embed(input_ids, pixel_values, image_positions)
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
                 max_new_tokens: int = 16, **kwargs) -> Tensor:
        """Greedy by default; prompts (`<image>` widened) must be left-padded. Returns only the new token ids."""
        embeds = self.embed(input_ids, pixel_values)
        tok = self.tokenizer
        kwargs = {"do_sample": False, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id, **kwargs}
        return self.language.model.generate(
            inputs_embeds=embeds, attention_mask=attention_mask, max_new_tokens=max_new_tokens, **kwargs
        )
