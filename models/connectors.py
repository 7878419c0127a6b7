"""Connectors: map vision patch features (B, N, Dv) to language-model embeddings (B, M, D)."""

from __future__ import annotations

import math

from torch import Tensor, nn

_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}


class Connector(nn.Module):
    """Base: subclasses keep the token count unless they say otherwise (`num_tokens`)."""

    in_dim: int
    out_dim: int

    def num_tokens(self, num_patches: int) -> int:
        return num_patches


class LinearConnector(Connector):
    """LLaVA-1.0 projector: a single linear map."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class MLPConnector(Connector):
    """LLaVA-1.5 projector; `depth=2, activation="gelu"` is `mlp2x_gelu`."""

    def __init__(self, in_dim: int, out_dim: int, depth: int = 2, activation: str = "gelu", hidden_dim: int | None = None) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"MLPConnector depth must be >= 1, got {depth}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"MLPConnector activation {activation!r} unknown; choose one of {sorted(_ACTIVATIONS)}")
        self.in_dim, self.out_dim = in_dim, out_dim
        hidden = hidden_dim or out_dim
        layers: list[nn.Module] = [nn.Linear(in_dim, hidden if depth > 1 else out_dim)]
        for i in range(1, depth):
            layers += [_ACTIVATIONS[activation](), nn.Linear(hidden, hidden if i < depth - 1 else out_dim)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class PatchMergerConnector(Connector):
    """Space-to-depth merge of each `merge x merge` block of neighbouring patches, then an MLP.

    The token-reducing connector of InternVL (pixel shuffle) and Qwen2-VL (patch merger):
    fewer, wider image tokens. Every merged cell keeps its own input channels, so position
    within the block survives without position embeddings; with `merge` equal to the grid
    side the whole image becomes one token, the Relation Networks "CNN+MLP" read-out.
    """

    def __init__(self, in_dim: int, out_dim: int, merge: int = 2, depth: int = 2, activation: str = "gelu",
                 hidden_dim: int | None = None) -> None:
        super().__init__()
        if merge < 1:
            raise ValueError(f"PatchMergerConnector merge must be >= 1, got {merge}")
        self.in_dim, self.out_dim, self.merge = in_dim, out_dim, merge
        self.mlp = MLPConnector(merge * merge * in_dim, out_dim, depth=depth, activation=activation,
                                hidden_dim=hidden_dim)

    def _grid(self, num_patches: int) -> int:
        side = math.isqrt(num_patches)
        if side * side != num_patches or side % self.merge:
            raise ValueError(f"PatchMergerConnector needs a square grid whose side is divisible by merge={self.merge}; "
                             f"got {num_patches} patches")
        return side

    def num_tokens(self, num_patches: int) -> int:
        return (self._grid(num_patches) // self.merge) ** 2

    def forward(self, x: Tensor) -> Tensor:
        B, N, D = x.shape
        s, m = self._grid(N), self.merge
        x = x.reshape(B, s // m, m, s // m, m, D).permute(0, 1, 3, 2, 4, 5).reshape(B, (s // m) ** 2, m * m * D)
        return self.mlp(x)
