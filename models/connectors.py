"""Connectors: map vision patch features (B, N, Dv) to language-model embeddings (B, M, D)."""

from __future__ import annotations

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
