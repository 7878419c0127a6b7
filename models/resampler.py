"""Flamingo's Perceiver Resampler: a fixed number of learned latents read any number of patches.

The latents attend to the concatenation [media, latents], so each layer can also keep what
earlier layers wrote into them. The output width stays `in_dim` unless `out_dim` differs, in
which case a final linear map makes it usable as a LLaVA connector too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.connectors import Connector


def feed_forward(dim: int, mult: int = 4) -> nn.Sequential:
    """Pre-norm MLP, bias-free as in Flamingo."""
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(),
                         nn.Linear(dim * mult, dim, bias=False))


def in_input_dtype(module: nn.Module, x: Tensor) -> Tensor:
    """`module(x)` computed in x's dtype, the parameters cast rather than x, for a Linear, a LayerNorm,
    a parameter-free layer or a Sequential of these. Why: a bf16 LM's hidden states then get no fp32
    copy in a block whose trained parameters stay fp32 (their gradients arrive in fp32)."""
    if isinstance(module, nn.Sequential):
        for layer in module:
            x = in_input_dtype(layer, x)
        return x
    if isinstance(module, nn.Linear):
        bias = None if module.bias is None else module.bias.to(x.dtype)
        return F.linear(x, module.weight.to(x.dtype), bias)
    if isinstance(module, nn.LayerNorm):
        weight, bias = (None if t is None else t.to(x.dtype) for t in (module.weight, module.bias))
        return F.layer_norm(x, module.normalized_shape, weight, bias, module.eps)
    if next(module.parameters(), None) is not None:
        raise TypeError(f"in_input_dtype: cannot cast the parameters of a {type(module).__name__}")
    return module(x)


def split_heads(x: Tensor, heads: int) -> Tensor:
    """(..., L, heads * d) -> (..., heads, L, d), the layout scaled_dot_product_attention wants."""
    return x.unflatten(-1, (heads, -1)).transpose(-3, -2)


def merge_heads(x: Tensor) -> Tensor:
    return x.transpose(-3, -2).flatten(-2)


class PerceiverAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, media: Tensor, latents: Tensor) -> Tensor:
        """media (B, N, D), latents (B, M, D) -> update for the latents (B, M, D)."""
        media, latents = self.norm_media(media), self.norm_latents(latents)
        q = split_heads(self.to_q(latents), self.heads)
        k, v = (split_heads(t, self.heads) for t in self.to_kv(torch.cat([media, latents], -2)).chunk(2, -1))
        return self.to_out(merge_heads(F.scaled_dot_product_attention(q, k, v)))


class PerceiverResampler(Connector):
    """(B, N, Dv) -> (B, num_latents, out_dim), or (B, T, F, N, Dv) media/frames -> (B, T, num_latents, out_dim).

    `max_num_media` / `max_num_frames` enable learned time embeddings over the T and F axes
    (off by default, as in open_flamingo), shaped as open_flamingo's (`media_time_embs`
    (T, 1, D), `frame_embs` (F, D)) so its checkpoints load. Images resampled one by one as
    (I, N, Dv) say where each sits among its row's media with `media_index` (I,); without it
    all count as the first, and the other time embeddings would never be used or trained.
    """

    def __init__(self, in_dim: int, out_dim: int, num_latents: int = 64, depth: int = 6, heads: int = 8,
                 dim_head: int = 64, ff_mult: int = 4, max_num_media: int | None = None,
                 max_num_frames: int | None = None) -> None:
        super().__init__()
        if num_latents < 1 or depth < 1:
            raise ValueError(f"PerceiverResampler needs num_latents >= 1 and depth >= 1, got {num_latents}, {depth}")
        self.in_dim, self.out_dim, self.num_latents = in_dim, out_dim, num_latents
        self.latents = nn.Parameter(torch.randn(num_latents, in_dim))
        self.media_time_embs = nn.Parameter(torch.randn(max_num_media, 1, in_dim)) if max_num_media else None
        self.frame_embs = nn.Parameter(torch.randn(max_num_frames, in_dim)) if max_num_frames else None
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(in_dim, heads, dim_head), feed_forward(in_dim, ff_mult)])
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(in_dim)
        self.proj = nn.Linear(in_dim, out_dim) if out_dim != in_dim else nn.Identity()
        self.register_load_state_dict_pre_hook(_frame_embs_from_3d)

    def num_tokens(self, num_patches: int) -> int:
        return self.num_latents

    def forward(self, x: Tensor, media_index: Tensor | None = None, num_media: int | None = None) -> Tensor:
        """`media_index`: (B,) for (B, N, D) input, (B, T) for 5-D input (default: 0..T-1 in every row).
        `num_media`: a bound the caller knows (media_index < num_media), checked against max_num_media
        instead of media_index's values, which the host would wait for."""
        if x.ndim == 3:
            index = None if media_index is None else media_index[:, None]
            return self._resample(x[:, None, None], index, num_media)[:, 0]
        if x.ndim == 5:
            return self._resample(x, media_index, num_media)
        raise ValueError(f"PerceiverResampler expects (B, N, D) or (B, T, F, N, D) input, got {tuple(x.shape)}")

    def _resample(self, x: Tensor, media_index: Tensor | None, num_media: int | None) -> Tensor:
        B, T, Fr, N, D = x.shape
        if self.frame_embs is not None:
            if Fr > self.frame_embs.shape[0]:
                raise ValueError(f"{Fr} frames but max_num_frames={self.frame_embs.shape[0]}")
            x = x + self.frame_embs[:Fr, None]
        x = x.reshape(B, T, Fr * N, D)
        if self.media_time_embs is not None:
            limit = self.media_time_embs.shape[0]
            if media_index is None:  # checked on the shape: no device sync
                if T > limit:
                    raise ValueError(f"media number {T} of a row but max_num_media={limit}")
                media_index = torch.arange(T, device=x.device).expand(B, T)
            elif num_media is not None:  # checked on the caller's bound: no device sync
                if num_media > limit:
                    raise ValueError(f"media number {num_media} of a row but max_num_media={limit}")
            elif media_index.numel() and int(media_index.max()) >= limit:
                raise ValueError(f"media number {int(media_index.max()) + 1} of a row but max_num_media={limit}")
            x = x + self.media_time_embs[media_index]
        latents = self.latents.expand(B, T, -1, -1)
        for attn, ff in self.layers:
            latents = latents + attn(x, latents)
            latents = latents + ff(latents)
        return self.proj(self.norm(latents))


def _frame_embs_from_3d(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """Checkpoints saved before frame_embs took open_flamingo's (F, D) shape held (F, 1, D)."""
    key = prefix + "frame_embs"
    old = state_dict.get(key)
    if old is not None and old.ndim == 3 and old.shape[1] == 1:
        state_dict[key] = old[:, 0]
