"""`PI3NN`: three MLPs `mean` (f), `upper` (u) and `lower` (l), the model family "pi3nn".

`forward(x)` returns one tensor (B, 3): columns f(x), u(x), l(x), with u, l > 0 (the paper's
sqrt(z**2) output transform, with eps = 0.01: a floor of 0.1 standardised units, because with u ~ 0
where z crosses zero a single training ratio (y - f) / u can set alpha for every input). The output biases of u
and l start at `ood_bias` (UQnet's OOD experiment uses 10.0) when `ood_init` is on: training on the
residuals pulls them down only where there are data, so u and l stay large away from the data and the
interval widens there. Data parallelism only (no parallel plan).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from orbit.models.registry import register_family

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


@dataclass
class PI3NNConfig:
    in_features: int
    hidden: list[int] = field(default_factory=lambda: [64])
    bound_hidden: list[int] | None = None  # u and l networks; None: the same as `hidden`
    activation: str = "relu"
    ood_init: bool = True
    ood_bias: float = 10.0
    eps: float = 1e-2  # u = sqrt(z^2 + eps) >= 0.1 in standardised units: (y - f) / u stays bounded

    def __post_init__(self) -> None:
        hidden = list(self.hidden) + list(self.bound_hidden or [])
        if self.in_features < 1 or any(h < 1 for h in hidden):
            raise ValueError(f"PI3NN sizes must be >= 1, got in_features={self.in_features}, hidden={self.hidden}, "
                             f"bound_hidden={self.bound_hidden}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"PI3NN activation {self.activation!r} is not one of {sorted(ACTIVATIONS)}")
        if self.ood_init and not self.ood_bias > 0:
            raise ValueError(f"ood_bias must be > 0 when ood_init is on, got {self.ood_bias}")


def mlp(in_features: int, hidden: list[int], activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = in_features
    for size in hidden:
        layers += [nn.Linear(width, size), ACTIVATIONS[activation]()]
        width = size
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


class PI3NN(nn.Module):
    """x (B, in_features) -> (B, 3): [f(x), u(x), l(x)]."""

    def __init__(self, config: PI3NNConfig):
        super().__init__()
        self.config = config
        bound_hidden = list(config.bound_hidden or config.hidden)
        self.mean = mlp(config.in_features, list(config.hidden), config.activation)
        self.upper = mlp(config.in_features, bound_hidden, config.activation)
        self.lower = mlp(config.in_features, bound_hidden, config.activation)
        if config.ood_init:
            with torch.no_grad():
                for net in (self.upper, self.lower):
                    net[-1].bias.fill_(config.ood_bias)

    def positive(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(z * z + self.config.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.mean(x), self.positive(self.upper(x)), self.positive(self.lower(x))], dim=1)


def _example() -> tuple[PI3NN, tuple[torch.Tensor]]:
    return PI3NN(PI3NNConfig(in_features=4, hidden=[8, 8])), (torch.randn(6, 4),)


register_family("pi3nn", PI3NN, example=_example)
