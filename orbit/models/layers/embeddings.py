"""Fixed 2-D sin-cos positions and the lead-time embedding added to the aggregated tokens."""
from __future__ import annotations

import math

import torch
from timm.layers import build_sincos2d_pos_embed
from torch import nn


def sincos_pos_embed_2d(grid_size: tuple[int, int], embed_dim: int) -> torch.Tensor:
    """Fixed positions for a row-major (H/p, W/p) token grid -> (L, D) (timm's 2-D sin-cos)."""
    return build_sincos2d_pos_embed(list(grid_size), dim=embed_dim)


def sinusoidal_features(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """t: (B,) -> (B, dim) [cos | sin] features at periods 2*pi .. 2*pi*max_period (in units of t).

    Sinusoids resolve both 6-hour and multi-week lead times, where one linear feature would not.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class LeadTimeEmbedding(nn.Module):
    """lead_hours: (B,) -> (B, D): sinusoidal features of lead_hours / scale, then a 2-layer MLP."""

    def __init__(self, embed_dim: int, scale_hours: float = 1.0, freq_dim: int = 256):
        super().__init__()
        self.scale_hours = scale_hours
        self.freq_dim = freq_dim
        self.fc1 = nn.Linear(freq_dim, embed_dim)
        self.act = nn.SiLU()
        self.fc2 = nn.Linear(embed_dim, embed_dim)

    def forward(self, lead_hours: torch.Tensor) -> torch.Tensor:
        feats = sinusoidal_features(lead_hours / self.scale_hours, self.freq_dim)
        return self.fc2(self.act(self.fc1(feats.to(self.fc1.weight.dtype))))
