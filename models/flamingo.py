"""Flamingo composition: resampled image features reach a causal LM through gated cross-attention.

The `<image>` tokens stay in the text. Gated cross-attention blocks are inserted by replacing
entries of the decoder-layer `nn.ModuleList` (at a declared attribute path, or the list of the
layer classes the LM declares; `models.language.decoder_layer_list`, through a LoRA/QLoRA wrapper
too) with `FlamingoLayer` wrappers; the blocks' parameters are owned only by `Flamingo.cross_attention`.

Media conditioning travels through a `MediaState` shared by Flamingo and the wrappers. It is
filled only inside `Flamingo.forward` / `generate`, by a forward hook on the LM's input
embedding: the one place every LM call (full forward, prefill, each cached decoding step)
passes with its input_ids. Outside those calls the wrapped LM behaves exactly like the base LM.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from data.tokenize import IGNORE_INDEX
from models.connectors import Connector
from models.language import LanguageModel, decoder_layer_list
from models.losses import chunked_next_token_loss, next_token_loss
from models.resampler import PerceiverResampler, feed_forward, in_input_dtype, merge_heads, split_heads
from models.sample_attention import sample_causal_mask, segment_positions
from models.vision import VisionEncoder, encode_without_frozen_graph

END_OF_CHUNK_TOKEN = "<|endofchunk|>"


class GatedCrossAttentionBlock(nn.Module):
    """Text (LM width) attends to visual tokens (vision width); tanh gates start at 0 so the LM starts unchanged.

    Runs in the hidden states' dtype (a bf16 LM's blocks compute in bf16 with their parameters cast,
    fp32 masters kept), so the hidden states are never copied to the parameters' dtype.
    """

    def __init__(self, dim: int, dim_visual: int, heads: int = 8, dim_head: int = 64, ff_mult: int = 4) -> None:
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim_visual, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ff = feed_forward(dim, ff_mult)
        self.ff_gate = nn.Parameter(torch.zeros(1))

    def attend(self, x: Tensor, media: Tensor, attn_bias: Tensor, has_media: Tensor) -> Tensor:
        """x (B, L, D); media (B, T, M, Dv); attn_bias (B, 1, L, T*M), has_media (B, L, 1): `media_attention`."""
        if media.shape[1] == 0:
            return torch.zeros_like(x)
        q = split_heads(in_input_dtype(self.to_q, in_input_dtype(self.norm, x)), self.heads)
        kv = in_input_dtype(self.to_kv, media.flatten(1, 2).to(x.dtype))
        k, v = (split_heads(t, self.heads) for t in kv.chunk(2, -1))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias.to(q.dtype))
        return torch.where(has_media, in_input_dtype(self.to_out, merge_heads(out)), 0.0)

    def forward(self, x: Tensor, media: Tensor, attn_bias: Tensor, has_media: Tensor) -> Tensor:
        h = x + self.attn_gate.tanh().to(x.dtype) * self.attend(x, media, attn_bias, has_media)
        return h + self.ff_gate.tanh().to(x.dtype) * in_input_dtype(self.ff, h)


def media_attention(media_idx: Tensor, num_media: int, tokens_per_media: int, immediate: bool,
                    dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(attn_bias (B, 1, L, T*M), has_media (B, L, 1)) from media_idx (B, L): images at or before each token.

    Built once per LM call and shared by every block: an additive mask in the queries' dtype (0 where
    a token may look, -inf elsewhere) is what SDPA's memory-efficient kernel takes without converting.
    A token sees its latest image (or all earlier ones when not `immediate`); tokens with no image
    see every key (no all-masked row, so no NaN) and their output is zeroed through has_media.
    """
    slot = torch.arange(1, num_media + 1, device=media_idx.device)
    idx = media_idx[..., None]
    has_media = idx > 0
    allowed = (slot == idx if immediate else slot <= idx) | ~has_media  # (B, L, T)
    bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, float("-inf"))
    bias = bias[..., None].expand(*allowed.shape, tokens_per_media).flatten(-2)
    return bias[:, None], has_media


def query_dtype(hidden: Tensor) -> torch.dtype:
    """The dtype the blocks' queries take: autocast's when it is on (bf16-mixed), else the hidden states'."""
    device = hidden.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype


@dataclass
class MediaState:
    """Set by Flamingo for one forward/generate call; read by every FlamingoLayer."""

    active: bool = False
    immediate: bool = True
    media: Tensor | None = None  # (B, T, M, Dv) resampled features, rows zero-padded to T images
    num_media: Tensor | None = None  # (B,) images per row
    seen: Tensor | None = None  # (B,) images in earlier LM calls of this generation (KV cache)
    attn_bias: Tensor | None = None  # (B, 1, L, T*M) for the current LM call (`media_attention`)
    has_media: Tensor | None = None  # (B, L, 1) for the current LM call

    def clear(self) -> None:
        """In place: the wrappers hold this very object."""
        self.__init__()


class FlamingoLayer(nn.Module):
    """Applies its gated block to the hidden states, then the original decoder layer, args untouched.

    The blocks' list and the state are held as plain attributes, not submodules, so the LM's
    parameters (and freezing `language`) never include the cross-attention. The block is looked
    up in `Flamingo.cross_attention` at each call, so whatever replaced it there (an FSDP unit
    that gathers its sharded parameters) is what runs.
    """

    def __init__(self, decoder_layer: nn.Module, blocks: nn.ModuleList, index: int, state: MediaState) -> None:
        super().__init__()
        self.decoder_layer, self.index = decoder_layer, index
        object.__setattr__(self, "blocks", blocks)
        object.__setattr__(self, "state", state)

    @property
    def block(self) -> nn.Module:
        return self.blocks[self.index]

    def __getattr__(self, name: str):
        """Some HF models read attributes such as `attention_type` off their decoder layers."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "decoder_layer":
                raise
            return getattr(self.decoder_layer, name)

    def forward(self, hidden_states: Tensor, *args, **kwargs):
        s = self.state
        if s.active:
            hidden_states = self.block(hidden_states, s.media, s.attn_bias, s.has_media)
        return self.decoder_layer(hidden_states, *args, **kwargs)


class SpecialTokenDeltas(nn.Module):
    """Trainable offsets for the input and output embedding rows of a few token ids.

    Why not train the embedding matrix with a gradient mask: AdamW's weight decay would still
    move every row, and the optimizer would hold state for the whole vocabulary. The deltas
    start at zero, so the LM is unchanged until they train; they work with a frozen (even
    quantized) LM whose own weights never change.
    """

    def __init__(self, token_ids: list[int], dim: int) -> None:
        super().__init__()
        self.register_buffer("token_ids", torch.tensor(token_ids), persistent=False)
        self.input_delta = nn.Parameter(torch.zeros(len(token_ids), dim))
        self.output_delta = nn.Parameter(torch.zeros(len(token_ids), dim))

    def add_to_embeddings(self, input_ids: Tensor, embeds: Tensor) -> Tensor:
        match = input_ids[..., None] == self.token_ids  # (B, L, K)
        return embeds + (match.to(self.input_delta.dtype) @ self.input_delta).to(embeds.dtype)

    def add_to_logits(self, hidden: Tensor, logits: Tensor) -> Tensor:
        """In place (returns `logits`): the (B, L, V) logits are not copied for K columns. Autograd
        allows it, as the output head's backward does not need its output."""
        extra = (hidden.to(self.output_delta.dtype) @ self.output_delta.T).to(logits.dtype)
        return logits.index_add_(-1, self.token_ids, extra)


class Flamingo(nn.Module):
    """`resampler` is a factory called with (vision dim, vision dim): the resampled tokens stay in vision width.
    A Perceiver Resampler is given each image's place among its row's images (its time embeddings);
    any other connector (e.g. the Shapes demo's `PatchMergerConnector`) maps the tokens alone.
    `decoder_layers_path` (relative to the transformers model, e.g. "transformer.blocks"): where the
    decoder layers are; None finds them (`decoder_layer_list`). `loss_chunk_size`: as LLaVA's, the training
    loss this many positions at a time without full-vocabulary logits (`models.losses`)."""

    def __init__(
        self,
        vision: VisionEncoder,
        language: LanguageModel,
        resampler: Callable[[int, int], Connector] = PerceiverResampler,
        cross_attn_every_n_layers: int = 1,
        decoder_layers_path: str | None = None,
        only_attend_immediate_media: bool = True,
        xattn_heads: int = 8,
        xattn_dim_head: int = 64,
        xattn_ff_mult: int = 4,
        loss_chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        if cross_attn_every_n_layers < 1:
            raise ValueError(f"cross_attn_every_n_layers must be >= 1, got {cross_attn_every_n_layers}")
        self.vision = vision
        self.connector = resampler(vision.dim, vision.dim)
        self.language = language
        self.only_attend_immediate_media = only_attend_immediate_media
        self.loss_chunk_size = loss_chunk_size
        self.image_token_id = language.image_token_id
        (self.end_of_chunk_token_id,) = language.add_special_tokens([END_OF_CHUNK_TOKEN])
        self.special_tokens = SpecialTokenDeltas([self.image_token_id, self.end_of_chunk_token_id],
                                                 language.hidden_size)
        self._state = MediaState()

        _, layers = decoder_layer_list(language.model, decoder_layers_path)
        self._decoder_layers = [layers]  # a list, so it is not registered twice
        where = [i for i in range(len(layers)) if (i + 1) % cross_attn_every_n_layers == 0]
        self.cross_attention = nn.ModuleList(
            GatedCrossAttentionBlock(language.hidden_size, vision.dim, xattn_heads, xattn_dim_head, xattn_ff_mult)
            for _ in where
        )
        for k, i in enumerate(where):
            layers[i] = FlamingoLayer(layers[i], self.cross_attention, k, self._state)

    @property
    def decoder_layers(self) -> nn.ModuleList:
        """The LM's decoder-layer list, some entries our `FlamingoLayer` wrappers."""
        return self._decoder_layers[0]

    @property
    def tokenizer(self):
        return self.language.tokenizer

    @property
    def num_image_tokens(self) -> int:
        """Visual tokens per image seen by cross-attention (each image takes one `<image>` text token)."""
        return self.connector.num_tokens(self.vision.num_patches)

    def train_special_token_rows(self, enable: bool = True) -> None:
        """Whether the `<image>` / `<|endofchunk|>` rows learn (through their deltas), whatever `language` does."""
        self.special_tokens.requires_grad_(enable)

    def unwrap_language(self) -> LanguageModel:
        """Put the original decoder layers back (e.g. before `language.save_pretrained`); ends this Flamingo's use."""
        layers = self._decoder_layers[0]
        for i, layer in enumerate(layers):
            if isinstance(layer, FlamingoLayer):
                layers[i] = layer.decoder_layer
        return self.language

    def encode_images(self, pixel_values: Tensor, media_index: Tensor | None = None,
                      num_media: int | None = None) -> Tensor:
        """(I, 3, H, W) -> (I, M, Dv); `media_index` (I,): each image's place among its row's images
        (None: each the first), all below `num_media` when given. No graph through a frozen tower."""
        tokens = encode_without_frozen_graph(self.vision, pixel_values)
        if isinstance(self.connector, PerceiverResampler):
            return self.connector(tokens, media_index=media_index, num_media=num_media)
        return self.connector(tokens)

    def media_per_row(self, input_ids: Tensor, pixel_values: Tensor | None) -> tuple[Tensor, Tensor]:
        """Images (in `<image>` order, row 0 first) -> zero-padded (B, T, M, Dv) and per-row counts (B,).

        One host sync: T, the most images in a row (the media tensor's shape), read together with
        the check that the `<image>` tokens and the images agree in number.
        """
        is_img = input_ids == self.image_token_id
        counts = is_img.sum(1)
        n_images = 0 if pixel_values is None else pixel_values.shape[0]
        most = torch.cat([counts, counts.new_zeros(1)]).max()  # 0 for an empty batch
        T = int(torch.where(counts.sum() == n_images, most, -1))
        if T < 0:
            raise ValueError(f"batch has {int(counts.sum())} <image> tokens but {n_images} images")
        rows = torch.repeat_interleave(counts, output_size=n_images)  # each image's row
        slots = torch.arange(n_images, device=counts.device) - (counts.cumsum(0) - counts)[rows]
        if n_images:
            feats = self.encode_images(pixel_values, slots, T)
        else:
            dtype = next(self.connector.parameters()).dtype
            feats = torch.zeros(0, self.num_image_tokens, self.vision.dim, device=input_ids.device, dtype=dtype)
        media = feats.new_zeros(input_ids.shape[0], T, *feats.shape[1:])
        return media.index_put((rows, slots), feats), counts

    @contextlib.contextmanager
    def conditioned_on(self, media: Tensor, num_media: Tensor) -> Iterator[None]:
        """Within the block, LM calls see `media` and the special-token deltas."""
        s = self._state
        s.active, s.immediate, s.media, s.num_media = True, self.only_attend_immediate_media, media, num_media
        s.seen = torch.zeros_like(num_media)
        handles = [self.language.model.get_input_embeddings().register_forward_hook(self._on_embed)]
        out_emb = self.language.model.get_output_embeddings()
        if out_emb is not None:
            handles.append(out_emb.register_forward_hook(self._on_logits))
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            s.clear()

    def _on_embed(self, module: nn.Module, args: tuple, embeds: Tensor) -> Tensor:
        input_ids = args[0]
        s = self._state
        if input_ids.shape[0] != s.media.shape[0]:  # beam search / num_return_sequences repeat rows
            k, rem = divmod(input_ids.shape[0], s.media.shape[0])
            if rem:
                raise ValueError(f"LM called with {input_ids.shape[0]} rows for {s.media.shape[0]} media rows")
            s.media, s.num_media, s.seen = (t.repeat_interleave(k, 0) for t in (s.media, s.num_media, s.seen))
        # `<image>` at p conditions positions >= p; cached steps continue the count. Clamped, since
        # generated `<image>` tokens bring no new pixels.
        idx = s.seen[:, None] + (input_ids == self.image_token_id).cumsum(1)
        media_idx = torch.minimum(idx, s.num_media[:, None])
        s.seen = media_idx[:, -1]
        _, T, M, _ = s.media.shape
        s.attn_bias, s.has_media = media_attention(media_idx, T, M, s.immediate, query_dtype(embeds))
        return self.special_tokens.add_to_embeddings(input_ids, embeds)

    def _on_logits(self, module: nn.Module, args: tuple, logits: Tensor) -> Tensor:
        return self.special_tokens.add_to_logits(args[0], logits)

    def embed(self, input_ids: Tensor) -> Tensor:
        """Input embeddings as the LM sees them inside Flamingo (special-token deltas added)."""
        return self.special_tokens.add_to_embeddings(input_ids, self.language.embed(input_ids))

    def output_logits(self, hidden: Tensor) -> Tensor:
        """The LM's output head plus the special-token deltas, as `_on_logits` gives them inside a call."""
        return self.special_tokens.add_to_logits(hidden, self.language.output_head(hidden))

    def forward(self, input_ids: Tensor, attention_mask: Tensor, pixel_values: Tensor | None = None,
                labels: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
        """Returns (logits, loss); the loss is next-token CE over labels != -100, never on `<image>`.
        With `loss_chunk_size` and labels, the loss is chunked and no logits are returned."""
        media, counts = self.media_per_row(input_ids, pixel_values)
        if labels is not None:
            labels = labels.masked_fill(labels == self.image_token_id, IGNORE_INDEX)
        chunked = self.loss_chunk_size is not None and labels is not None
        # the causal mask inside each row's sample (after its padding, either side), built here so
        # that transformers does not read the mask back to ask whether it is all ones
        segments = attention_mask.long() - 1
        shape = torch.zeros((), dtype=self.language.model.dtype, device=input_ids.device).expand(*input_ids.shape, 1)
        mask = sample_causal_mask(self.language.model.config, shape, segments)
        positions = segment_positions(segments)
        with self.conditioned_on(media, counts):
            if chunked:  # the embedding call sets the media state, as a full LM call does
                hidden = self.language.hidden_states(self.language.embed(input_ids), mask, positions)
            else:
                logits = self.language.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                                             use_cache=False).logits
        if chunked:  # outside the hooks: the checkpointed chunks recompute with `output_logits` in the backward too
            return None, chunked_next_token_loss(hidden, self.output_logits, labels, self.loss_chunk_size)
        return logits, None if labels is None else next_token_loss(logits, labels)

    @torch.no_grad()
    def generate(self, input_ids: Tensor, attention_mask: Tensor, pixel_values: Tensor | None = None,
                 max_new_tokens: int = 16, **kwargs) -> Tensor:
        """Greedy by default; prompts must be left-padded; other kwargs go to HF `generate`. New ids only."""
        media, counts = self.media_per_row(input_ids, pixel_values)
        tok = self.tokenizer
        kwargs = {"do_sample": False, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id, **kwargs}
        with self.conditioned_on(media, counts):
            out = self.language.model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                               max_new_tokens=max_new_tokens, **kwargs)
        return out[:, input_ids.shape[1]:]
