"""Model families of the land-calibration plug-in.

- "dbuq_net" (`DBUQNet`): F([y, z]) -> x, the conditional generator that maps an observation y and a
  latent z ~ N(0, I) to a posterior sample (normalized units).
- "land_emulator" (`Emulator`): parameters -> outputs, optionally through a fixed linear decoder
  (PCA of the outputs): out = mean + scores @ components, the network predicting only the scores.

Both are small MLPs with no parallel plan: data parallelism only.
"""
from __future__ import annotations

import torch
from torch import nn

from orbit.models.registry import register_family


def mlp(width_in: int, hidden: list[int], width_out: int) -> nn.Sequential:
    if width_in < 1 or width_out < 1 or any(h < 1 for h in hidden):
        raise ValueError(f"MLP sizes must be >= 1, got in={width_in}, hidden={hidden}, out={width_out}")
    layers: list[nn.Module] = []
    for size in hidden:
        layers += [nn.Linear(width_in, size), nn.SiLU()]
        width_in = size
    layers.append(nn.Linear(width_in, width_out))
    return nn.Sequential(*layers)


class DBUQNet(nn.Module):
    """y (B, K), z (B, D) -> x (B, D)."""

    def __init__(self, n_outputs: int, n_parameters: int, hidden: list[int]):
        super().__init__()
        self.n_outputs, self.n_parameters = n_outputs, n_parameters
        self.net = mlp(n_outputs + n_parameters, list(hidden), n_parameters)

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([y, z], dim=-1))


class Emulator(nn.Module):
    """x (B, D) -> y (B, K), normalized units. With `components` (R, K) the network predicts R scores and
    the output is scores @ components + center (a fixed, non-trained decoder: buffers)."""

    def __init__(self, n_parameters: int, n_outputs: int, hidden: list[int], n_components: int = 0):
        super().__init__()
        width = n_components or n_outputs
        self.net = mlp(n_parameters, list(hidden), width)
        self.register_buffer("components", torch.eye(width, n_outputs) if n_components else torch.zeros(0, n_outputs))
        self.register_buffer("center", torch.zeros(n_outputs))

    def set_decoder(self, components: torch.Tensor, center: torch.Tensor) -> None:
        self.components.copy_(components)
        self.center.copy_(center)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out @ self.components + self.center if self.components.numel() else out


def _dbuq_example():
    return DBUQNet(3, 2, [8, 8]), (torch.randn(5, 3), torch.randn(5, 2))


def _emulator_example():
    return Emulator(2, 6, [8], n_components=3), (torch.randn(5, 2),)


register_family("dbuq_net", DBUQNet, example=_dbuq_example)
register_family("land_emulator", Emulator, example=_emulator_example)
