"""Per-variable patch embedding: every vocabulary variable owns its own linear patch projection."""
from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """x: (B, V, H, W) -> patches (B, V, L, p*p), tokens row-major over the (H/p, W/p) grid."""
    return rearrange(x, "b v (h p1) (w p2) -> b v (h w) (p1 p2)", p1=patch_size, p2=patch_size)


class VariablePatchEmbed(nn.Module):
    """Patch embeddings of the whole vocabulary held as one weight (V_vocab, D, p, p).

    Holding them stacked lets a batch select any subset of variables with one gather and embed
    them with one einsum (no Python loop over variables), and lets the fused front end compose
    these weights with the aggregation projections (see `VariableAggregation.forward_fused`).
    """

    def __init__(self, vocab_size: int, patch_size: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.weight = nn.Parameter(torch.empty(vocab_size, embed_dim, patch_size, patch_size))
        self.bias = nn.Parameter(torch.empty(vocab_size, embed_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Same init as one `nn.Conv2d(1, D, p, p)` per variable (fan_in = p*p)."""
        bound = 1.0 / math.sqrt(self.patch_size**2)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def select(self, var_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """var_ids: (V,) -> weight (V, D, p*p), bias (V, D) of the selected variables."""
        return self.weight[var_ids].flatten(2), self.bias[var_ids]

    def forward(self, x: torch.Tensor, var_ids: torch.Tensor) -> torch.Tensor:
        """x: (B, V, H, W), var_ids: (V,) -> per-variable tokens (B, V, L, D)."""
        weight, bias = self.select(var_ids)
        tokens = torch.einsum("bvlk,vdk->bvld", patchify(x, self.patch_size), weight)
        return tokens + bias[:, None, :]
