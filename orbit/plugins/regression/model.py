"""`MLPRegressor`: a plain multilayer perceptron, the model family "mlp".

It registers no parallel plan, so it runs data parallel only (DDP/FSDP over `dp_*`); asking for tp,
sp or pp fails before any collective with a message naming the family and the axes it supports.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from orbit.models.registry import register_family


@dataclass
class MLPConfig:
    in_features: int
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    out_features: int = 1
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.in_features < 1 or self.out_features < 1 or any(h < 1 for h in self.hidden):
            raise ValueError(f"MLP sizes must be >= 1, got in_features={self.in_features}, hidden={self.hidden}, "
                             f"out_features={self.out_features}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"MLP dropout must be in [0, 1), got {self.dropout}")


class MLPRegressor(nn.Module):
    """x (B, in_features) -> (B, out_features): Linear-GELU(-Dropout) blocks, then a linear head."""

    def __init__(self, config: MLPConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        width = config.in_features
        for size in config.hidden:
            layers += [nn.Linear(width, size), nn.GELU()]
            if config.dropout:
                layers.append(nn.Dropout(config.dropout))
            width = size
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, config.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _example() -> tuple[MLPRegressor, tuple[torch.Tensor]]:
    return MLPRegressor(MLPConfig(in_features=4, hidden=[8, 8])), (torch.randn(6, 4),)


register_family("mlp", MLPRegressor, example=_example)
