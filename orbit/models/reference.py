"""Straightforward ClimaX-style formulation of the same model: the baseline for tests and benchmarks.

Written the obvious way on purpose: one `nn.Conv2d` per variable in a Python loop, variable
aggregation with `nn.MultiheadAttention` over explicit (B*L, V, D) tokens, and blocks with a
fused qkv projection and explicit softmax(Q K^T / sqrt(d)) V. `load_from_orbit` copies an
`OrbitViT`'s weights in, so both must compute the same function.
"""
from __future__ import annotations

import dataclasses
import math

import torch
from einops import rearrange
from timm.layers import DropPath, Mlp
from torch import nn

from .config import OrbitConfig
from .layers import sinusoidal_features
from .orbit_vit import OrbitViT


class ReferenceAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qk_norm: bool):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, L, D) -> (B, L, D)."""
        B, L, D = x.shape
        q, k, v = self.qkv(x).reshape(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        attn = (q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, L, D))


class ReferenceBlock(nn.Module):
    def __init__(self, config: OrbitConfig):
        super().__init__()
        D = config.embed_dim
        self.norm1 = nn.LayerNorm(D)
        self.attn = ReferenceAttention(D, config.num_heads, config.qk_norm)
        self.norm2 = nn.LayerNorm(D)
        self.mlp = Mlp(D, hidden_features=int(D * config.mlp_ratio), act_layer=nn.GELU)
        self.drop_path = DropPath(config.drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ReferenceClimaX(nn.Module):
    """Same contract as `OrbitViT.forward(x, var_ids, lead_hours, var_mask)`."""

    def __init__(self, config: OrbitConfig):
        super().__init__()
        self.config = config
        D, p = config.embed_dim, config.patch_size
        self.token_embeds = nn.ModuleList(nn.Conv2d(1, D, p, stride=p) for _ in config.variables)
        self.var_embed = nn.Parameter(torch.zeros(1, len(config.variables), D))
        self.var_query = nn.Parameter(torch.zeros(1, 1, D))
        self.var_agg = nn.MultiheadAttention(D, config.agg_heads, batch_first=True)
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_tokens, D), requires_grad=False)
        self.lead_time_embed = nn.Sequential(nn.Linear(config.lead_time_freq_dim, D), nn.SiLU(), nn.Linear(D, D))
        self.blocks = nn.ModuleList(ReferenceBlock(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(D)
        self.head = nn.Linear(D, len(config.out_variables) * p * p)

    def forward(self, x: torch.Tensor, var_ids: torch.Tensor, lead_hours: torch.Tensor,
                var_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, V, H, W), var_ids: (V,), lead_hours: (B,), var_mask: (B, V) -> (B, V_out, H, W)."""
        cfg = self.config
        B, L = x.shape[0], cfg.num_tokens
        ids = var_ids.tolist()
        tokens = torch.stack([self.token_embeds[vid](x[:, i : i + 1]) for i, vid in enumerate(ids)], dim=1)
        tokens = tokens.flatten(3).transpose(2, 3) + self.var_embed[:, ids, None, :]  # (B, V, L, D)

        per_token = rearrange(tokens, "b v l d -> (b l) v d")
        query = self.var_query.expand(B * L, -1, -1)
        padding = None if var_mask is None else (~var_mask).repeat_interleave(L, dim=0)  # (B*L, V)
        agg, _ = self.var_agg(query, per_token, per_token, key_padding_mask=padding, need_weights=False)
        h = agg.reshape(B, L, -1) + self.pos_embed
        h = h + self.lead_time_embed(sinusoidal_features(lead_hours / cfg.lead_time_scale, cfg.lead_time_freq_dim))[:, None]
        for block in self.blocks:
            h = block(h)
        patches = self.head(self.norm(h))
        gh, gw = cfg.grid_size
        return rearrange(patches, "b (h w) (v p1 p2) -> b v (h p1) (w p2)", h=gh, w=gw, p1=cfg.patch_size, p2=cfg.patch_size)


def _same_architecture(a: OrbitConfig, b: OrbitConfig) -> bool:
    ignore = {"fused_frontend", "name"}
    return all(getattr(a, f.name) == getattr(b, f.name) for f in dataclasses.fields(a) if f.name not in ignore)


@torch.no_grad()
def load_from_orbit(ref: ReferenceClimaX, orbit: OrbitViT) -> ReferenceClimaX:
    """Copy `orbit`'s weights into `ref`. The learned query has no projection in ORBIT, so the
    reference's q in-projection becomes the identity."""
    if not _same_architecture(ref.config, orbit.config):
        raise ValueError(f"configs differ: reference {ref.config} vs orbit {orbit.config}")
    D = orbit.config.embed_dim
    for v, conv in enumerate(ref.token_embeds):
        conv.weight.copy_(orbit.patch_embed.weight[v].unsqueeze(1))
        conv.bias.copy_(orbit.patch_embed.bias[v])
    ref.var_embed.copy_(orbit.var_embed.weight[None])
    agg = orbit.aggregation
    ref.var_query.copy_(agg.query.view(1, 1, D))
    eye = torch.eye(D, dtype=agg.k_proj.weight.dtype, device=agg.k_proj.weight.device)
    ref.var_agg.in_proj_weight.copy_(torch.cat([eye, agg.k_proj.weight, agg.v_proj.weight]))
    ref.var_agg.in_proj_bias.copy_(torch.cat([torch.zeros_like(agg.k_proj.bias), agg.k_proj.bias, agg.v_proj.bias]))
    ref.var_agg.out_proj.load_state_dict(agg.proj.state_dict())
    ref.pos_embed.copy_(orbit.pos_embed[None])
    ref.lead_time_embed[0].load_state_dict(orbit.lead_embed.fc1.state_dict())
    ref.lead_time_embed[2].load_state_dict(orbit.lead_embed.fc2.state_dict())
    for rb, ob in zip(ref.blocks, orbit.blocks):
        rb.norm1.load_state_dict(ob.norm1.state_dict())
        rb.norm2.load_state_dict(ob.norm2.state_dict())
        rb.mlp.load_state_dict(ob.mlp.state_dict())
        rb.attn.q_norm.load_state_dict(ob.attn.q_norm.state_dict())
        rb.attn.k_norm.load_state_dict(ob.attn.k_norm.state_dict())
        rb.attn.proj.load_state_dict(ob.attn.proj.state_dict())
        projections = (ob.attn.q_proj, ob.attn.k_proj, ob.attn.v_proj)
        rb.attn.qkv.weight.copy_(torch.cat([m.weight for m in projections]))
        rb.attn.qkv.bias.copy_(torch.cat([m.bias for m in projections]))
    ref.norm.load_state_dict(orbit.norm.state_dict())
    ref.head.load_state_dict(orbit.head.state_dict())
    return ref
