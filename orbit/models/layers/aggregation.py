"""Variable aggregation: cross-attention over the variable axis with one learned query.

Each spatial token holds V per-variable tokens; one learned query attends over them (per head)
and returns a single token, so the transformer sees L tokens however many variables are fed.
Absent variables (`var_mask` False) get -inf scores and thus exactly zero weight.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def _variable_weights(scores: torch.Tensor, var_mask: torch.Tensor | None) -> torch.Tensor:
    """scores: (B, L, H, V), var_mask: (B, V) bool or None -> softmax over V, absent ones 0.

    Every sample must have at least one present variable (otherwise its weights are NaN).
    """
    if var_mask is not None:
        scores = scores.masked_fill(~var_mask[:, None, None, :], float("-inf"))
    return scores.softmax(dim=-1)


class VariableAggregation(nn.Module):
    """One learned query (D,), key/value projections with biases, output projection.

    `forward` is the straightforward formulation on explicit per-variable tokens (B, V, L, D);
    `forward_fused` computes the same function from the raw patches without ever forming them.
    Both use the same parameters, so checkpoints are interchangeable.
    """

    def __init__(self, embed_dim: int, num_heads: int):
        super().__init__()
        self.head_dim = embed_dim // num_heads
        self.query = nn.Parameter(torch.zeros(embed_dim))
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.proj = nn.Linear(embed_dim, embed_dim)
        nn.init.trunc_normal_(self.query, std=0.02)

    def forward(self, tokens: torch.Tensor, var_mask: torch.Tensor | None = None) -> torch.Tensor:
        """tokens: (B, V, L, D), var_mask: (B, V) -> aggregated tokens (B, L, D)."""
        B, V, L, _ = tokens.shape
        d = self.head_dim
        keys = self.k_proj(tokens).view(B, V, L, -1, d)
        values = self.v_proj(tokens).view(B, V, L, -1, d)
        query = self.query.view(-1, d)
        scores = torch.einsum("bvlhd,hd->blhv", keys, query) / math.sqrt(d)
        weights = _variable_weights(scores, var_mask)
        out = torch.einsum("blhv,bvlhd->blhd", weights, values)
        return self.proj(out.flatten(2))

    def forward_fused(
        self,
        patches: torch.Tensor,
        patch_weight: torch.Tensor,
        token_bias: torch.Tensor,
        var_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Aggregate straight from raw patches, composing the linear maps first.

        patches: (B, V, L, k) with k = p*p; patch_weight P: (V, D, k); token_bias c: (V, D)
        (patch bias + variable embedding); var_mask: (B, V) -> (B, L, D).

        Per-variable tokens are t_v = P_v x_v + c_v, so for head h with query q_h:
          score_{h,v} = q_h . (W_k,h t_v + b_k,h) / sqrt(d) = a_{h,v} . x_v + s_{h,v}
          value_{h,v} = W_v,h t_v + b_v,h              = M_{h,v} x_v + m_{h,v}
        with a = P^T W_k,h^T q_h / sqrt(d): (V, H, k) and M = W_v,h P_v: (V, H, d, k) built once
        per step from the parameters. Per token this costs O(V k D) instead of O(V D^2), and the
        (B, V, L, D) tensor is never materialized.
        """
        B, V, L, k = patches.shape
        d = self.head_dim
        w_k = self.k_proj.weight.view(-1, d, self.k_proj.in_features)  # (H, d, D)
        w_v = self.v_proj.weight.view(-1, d, self.v_proj.in_features)  # (H, d, D)
        query = self.query.view(-1, d) / math.sqrt(d)  # (H, d)

        query_keys = torch.einsum("hd,hde->he", query, w_k)  # (H, D)
        score_w = torch.einsum("he,vek->vhk", query_keys, patch_weight)  # a: (V, H, k)
        score_b = token_bias @ query_keys.T + (query * self.k_proj.bias.view(-1, d)).sum(-1)  # (V, H)
        value_w = torch.einsum("hde,vek->hvkd", w_v, patch_weight)  # M: (H, V, k, d)
        value_b = self.v_proj(token_bias).view(V, -1, d)  # m: (V, H, d)

        scores = torch.einsum("bvlk,vhk->blhv", patches, score_w) + score_b.T
        weights = _variable_weights(scores, var_mask)  # (B, L, H, V)
        # weighted patches (B, L, H, V*k), then one batched matmul per head against M
        weighted = (weights[..., None] * patches.permute(0, 2, 1, 3)[:, :, None]).flatten(3)
        out = torch.einsum("blhj,hjd->blhd", weighted, value_w.flatten(1, 2))
        out = out + torch.einsum("blhv,vhd->blhd", weights, value_b)
        return self.proj(out.flatten(2))
