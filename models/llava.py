"""LLaVA composition: vision -> connector -> language model, image features spliced at `<image>`."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from models.connectors import Connector, MLPConnector
from models.language import LanguageModel
from models.losses import chunked_next_token_loss, next_token_loss, summed_label_logprobs
from models.splice import Spliced, splice_image_features
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

    def encode_images(self, pixel_values: Tensor) -> Tensor:
        """(I, 3, H, W) -> (I, M, D) LM-space image embeddings; no graph through a frozen tower."""
        return self.connector(encode_without_frozen_graph(self.vision, pixel_values))

    def embed(self, input_ids: Tensor, attention_mask: Tensor, pixel_values: Tensor | None,
              labels: Tensor | None = None, left_pad: bool = False, segment_ids: Tensor | None = None) -> Spliced:
        text = self.language.embed(input_ids)
        if pixel_values is None or pixel_values.shape[0] == 0:
            images = text.new_zeros(0, self.num_image_tokens, text.shape[-1])
        else:
            images = self.encode_images(pixel_values)
        return splice_image_features(input_ids, text, images, self.language.image_token_id, attention_mask, labels,
                                     left_pad=left_pad, segment_ids=segment_ids)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, pixel_values: Tensor | None = None,
                labels: Tensor | None = None, segment_ids: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
        """Returns (logits, loss); the loss is next-token CE over positions whose label is not -100.

        `segment_ids` marks packed rows (`data.packing`): attention stays inside each sample.
        """
        s = self.embed(input_ids, attention_mask, pixel_values, labels, segment_ids=segment_ids)
        mask = None if s.position_ids is not None else s.attention_mask
        if self.loss_chunk_size is not None and s.labels is not None:
            hidden = self.language.hidden_states(s.embeds, mask, s.position_ids)
            return None, chunked_next_token_loss(hidden, self.language.output_head, s.labels, self.loss_chunk_size)
        logits = self.language(s.embeds, mask, s.position_ids)
        return logits, None if s.labels is None else next_token_loss(logits, s.labels)

    def sequence_logprobs(self, input_ids: Tensor, attention_mask: Tensor, pixel_values: Tensor | None,
                          labels: Tensor) -> Tensor:
        """(B,) sum of log p(label token) over each row's labelled positions (DPO's policy terms)."""
        s = self.embed(input_ids, attention_mask, pixel_values, labels)
        return summed_label_logprobs(self.language(s.embeds, s.attention_mask), s.labels)

    @torch.no_grad()
    def generate(self, input_ids: Tensor, attention_mask: Tensor, pixel_values: Tensor | None = None,
                 max_new_tokens: int = 16, **kwargs) -> Tensor:
        """Greedy by default; prompts must be left-padded. Returns only the new token ids."""
        s = self.embed(input_ids, attention_mask, pixel_values, left_pad=True)
        tok = self.tokenizer
        kwargs = {"do_sample": False, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id, **kwargs}
        return self.language.model.generate(
            inputs_embeds=s.embeds, attention_mask=s.attention_mask, max_new_tokens=max_new_tokens, **kwargs
        )
