"""BLIP-2's Q-Former as a connector: learned queries read the image through cross-attention.

A BERT-style stack over `num_queries` learned query embeddings. Every layer runs
self-attention among the queries and a feed-forward block; layers whose index is a multiple
of `cross_attention_freq` (0, freq, 2*freq, ...) also cross-attend from the queries to the
image features, whose keys and values are projected straight from `in_dim`.

Design, following BLIP-2 (LAVIS `Blip2Qformer`, transformers `Blip2QFormerModel`):

- **Post-LN** sub-layers as in BERT: `x = LayerNorm(x + dropout(sublayer(x)))`. This keeps
  the block layout of the pretrained Q-Former; the query embeddings get an input LayerNorm
  (BERT's embedding LayerNorm), and the last layer's output is already normalised, so no
  final norm precedes the projection. Weights use BERT's init (normal, std 0.02).
- **ln_vision**: one LayerNorm over the image features before any cross-attention.
- **No masks**: with no text in the stack (BLIP-2's LLM stage), self-attention among queries
  is bidirectional, and every image in a batch has the same number of valid patches.
- **No positions** in keys: cross-attention treats the patches as a set, so permuting them
  leaves the output unchanged; any spatial information must already be in the features.
- Key projections carry no bias: a key bias shifts all of one query's logits by the same
  amount, which softmax cancels, so it would be a parameter that never learns.
- `language_projection`: a final linear map `hidden_dim -> out_dim` into LM embedding space.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.connectors import Connector
from models.resampler import merge_heads, split_heads


class QFormerAttention(nn.Module):
    """Post-LN multi-head attention block: `LayerNorm(x + dropout(out(attn(x, context))))`.

    Self-attention when `context` is None; cross-attention from `x` (width `dim`) to
    `context` (width `kv_dim`) otherwise.
    """

    def __init__(self, dim: int, heads: int, kv_dim: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        kv_dim = kv_dim or dim
        self.heads, self.dropout = heads, dropout
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(kv_dim, dim, bias=False)
        self.value = nn.Linear(kv_dim, dim)
        self.out = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        context = x if context is None else context
        q = split_heads(self.query(x), self.heads)
        k = split_heads(self.key(context), self.heads)
        v = split_heads(self.value(context), self.heads)
        attn = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.norm(x + self.drop(self.out(merge_heads(attn))))


class QFormerFeedForward(nn.Module):
    """Post-LN BERT MLP: `LayerNorm(x + dropout(W2 gelu(W1 x)))`."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim * mult), nn.GELU(), nn.Linear(dim * mult, dim), nn.Dropout(dropout))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.net(x))


class QFormerLayer(nn.Module):
    """Self-attention, optional cross-attention to the image (`cross_attn` is None without it), feed-forward."""

    def __init__(self, dim: int, image_dim: int, heads: int, ff_mult: int, dropout: float, cross: bool) -> None:
        super().__init__()
        self.self_attn = QFormerAttention(dim, heads, dropout=dropout)
        self.cross_attn = QFormerAttention(dim, heads, kv_dim=image_dim, dropout=dropout) if cross else None
        self.ff = QFormerFeedForward(dim, ff_mult, dropout)

    def forward(self, queries: Tensor, image: Tensor) -> Tensor:
        queries = self.self_attn(queries)
        if self.cross_attn is not None:
            queries = self.cross_attn(queries, image)
        return self.ff(queries)


class QFormerConnector(Connector):
    """(B, N, in_dim) image features -> (B, num_queries, out_dim) LM-space tokens.

    BLIP-2's defaults: 32 queries, BERT-base width (768, 12 layers, 12 heads), cross-attention
    every 2nd layer. Construct as `QFormerConnector(vision_dim, lm_dim, **kwargs)`, which is
    what LLaVA's connector factory and a `class_path`/`init_args` YAML entry do.
    """

    def __init__(self, in_dim: int, out_dim: int, num_queries: int = 32, hidden_dim: int = 768, depth: int = 12,
                 heads: int = 12, ff_mult: int = 4, cross_attention_freq: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        if num_queries < 1 or depth < 1 or cross_attention_freq < 1 or ff_mult < 1:
            raise ValueError("QFormerConnector needs num_queries, depth, cross_attention_freq and ff_mult >= 1, got "
                             f"{num_queries}, {depth}, {cross_attention_freq}, {ff_mult}")
        if heads < 1 or hidden_dim % heads:
            raise ValueError(f"QFormerConnector hidden_dim={hidden_dim} must be divisible by heads={heads}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"QFormerConnector dropout must be in [0, 1), got {dropout}")
        self.in_dim, self.out_dim, self.num_queries = in_dim, out_dim, num_queries
        self.cross_attention_freq = cross_attention_freq
        self.query_tokens = nn.Parameter(torch.zeros(num_queries, hidden_dim))
        self.query_norm = nn.LayerNorm(hidden_dim)  # BERT's embedding LayerNorm, applied to the queries
        self.query_drop = nn.Dropout(dropout)
        self.ln_vision = nn.LayerNorm(in_dim)
        self.layers = nn.ModuleList(
            QFormerLayer(hidden_dim, in_dim, heads, ff_mult, dropout, cross=i % cross_attention_freq == 0)
            for i in range(depth)
        )
        self.language_projection = nn.Linear(hidden_dim, out_dim)
        self.apply(self._init_weights)
        nn.init.normal_(self.query_tokens, std=0.02)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """BERT's initialisation: linear weights ~ N(0, 0.02), zero biases, unit LayerNorms."""
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    @property
    def cross_attention_layers(self) -> list[int]:
        """Indices of the layers that attend to the image."""
        return [i for i, layer in enumerate(self.layers) if layer.cross_attn is not None]

    def num_tokens(self, num_patches: int) -> int:
        return self.num_queries

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 3 or x.shape[-1] != self.in_dim:
            raise ValueError(f"QFormerConnector expects (B, N, {self.in_dim}) image features, got {tuple(x.shape)}")
        image = self.ln_vision(x)
        queries = self.query_drop(self.query_norm(self.query_tokens).expand(x.shape[0], -1, -1))
        for layer in self.layers:
            queries = layer(queries, image)
        return self.language_projection(queries)
