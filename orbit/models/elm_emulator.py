"""ELM spin-up emulator: multimodal per-cell inputs -> tokens -> pretrained ORBIT blocks -> equilibrium state.

Each input kind has its own encoder, and each encoder's outputs become tokens of width D (the
backbone's embed_dim), tagged with a learned modality embedding:
  forcing  (B, T, F) monthly series -> circular temporal convolutions -> T tokens (+ month embedding)
  statics  (B, S)                   -> MLP -> `static_tokens` tokens
  patch    (B, C, K, K) maps around the cell -> 2-D convolutions -> K*K tokens (+ position embedding)
A learned summary token is prepended; the ORBIT `blocks` mix all tokens; the head reads the final
norm of the summary token and the token mean and predicts the (normalized) equilibrium outputs
(the learned ones: outputs fixed by equilibrium identities are derived by the task, lm.derive_outputs).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from orbit.models.layers import Block
from orbit.models.layers.init import init_linear_and_norm


@dataclass(frozen=True)
class ElmEmulatorConfig:
    """Architecture: backbone fields must match the pretrained preset (embed_dim, depth, heads, ...)."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    qk_norm: bool
    n_months: int
    n_forcing: int
    n_static: int
    n_map: int
    patch: int
    n_outputs: int
    static_tokens: int = 4
    drop_path: float = 0.0

    def __post_init__(self):
        for key in ("n_months", "n_forcing", "n_static", "n_map", "patch", "n_outputs", "static_tokens"):
            if getattr(self, key) < 1:
                raise ValueError(f"ElmEmulatorConfig.{key} must be >= 1, got {getattr(self, key)}")
        if self.patch % 2 == 0:
            raise ValueError(f"ElmEmulatorConfig.patch must be odd (a cell and its neighbours), got {self.patch}")

    @property
    def num_tokens(self) -> int:
        return 1 + self.n_months + self.static_tokens + self.patch**2


class ForcingEncoder(nn.Module):
    """forcing: (B, T, F) -> tokens (B, T, D); circular convolutions because the climatology is cycled."""

    def __init__(self, n_forcing: int, n_months: int, dim: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv1d(n_forcing, dim, 3, padding=1, padding_mode="circular"), nn.GELU(),
            nn.Conv1d(dim, dim, 3, padding=1, padding_mode="circular"))
        self.month_embed = nn.Parameter(torch.zeros(n_months, dim))

    def forward(self, forcing: torch.Tensor) -> torch.Tensor:
        return rearrange(self.conv(rearrange(forcing, "b t f -> b f t")), "b d t -> b t d") + self.month_embed


class StaticEncoder(nn.Module):
    """statics: (B, S) -> tokens (B, n_tokens, D)."""

    def __init__(self, n_static: int, dim: int, n_tokens: int):
        super().__init__()
        self.n_tokens = n_tokens
        self.mlp = nn.Sequential(nn.Linear(n_static, dim), nn.GELU(), nn.Linear(dim, n_tokens * dim))

    def forward(self, statics: torch.Tensor) -> torch.Tensor:
        return rearrange(self.mlp(statics), "b (n d) -> b n d", n=self.n_tokens)


class SpatialEncoder(nn.Module):
    """patch: (B, C, K, K) -> tokens (B, K*K, D), one per neighbouring cell."""

    def __init__(self, n_map: int, patch: int, dim: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(n_map, dim, 3, padding=1), nn.GELU(), nn.Conv2d(dim, dim, 3, padding=1))
        self.pos_embed = nn.Parameter(torch.zeros(patch * patch, dim))

    def forward(self, patch: torch.Tensor) -> torch.Tensor:
        return rearrange(self.conv(patch), "b d h w -> b (h w) d") + self.pos_embed


class ElmSpinupEmulator(nn.Module):
    """(forcing (B, T, F), statics (B, S), patch (B, C, K, K)) -> normalized outputs (B, n_outputs).

    `blocks` and `norm` carry the pretrained ORBIT names (loadable from a pretraining checkpoint);
    the encoders, `modality_embed`, `summary_token` and `head` are new (finetune.replace).
    """

    NEW_MODULES: tuple[str, ...] = ("forcing_encoder", "static_encoder", "spatial_encoder", "modality_embed",
                                    "summary_token", "head")

    def __init__(self, config: ElmEmulatorConfig):
        super().__init__()
        self.config = config
        D = config.embed_dim
        self.forcing_encoder = ForcingEncoder(config.n_forcing, config.n_months, D)
        self.static_encoder = StaticEncoder(config.n_static, D, config.static_tokens)
        self.spatial_encoder = SpatialEncoder(config.n_map, config.patch, D)
        self.modality_embed = nn.Parameter(torch.zeros(3, D))
        self.summary_token = nn.Parameter(torch.zeros(1, 1, D))
        self.blocks = nn.ModuleList(
            Block(D, config.num_heads, config.mlp_ratio, config.qk_norm, config.drop_path)
            for _ in range(config.depth))
        self.norm = nn.LayerNorm(D)
        self.head = nn.Sequential(nn.Linear(2 * D, 2 * D), nn.GELU(), nn.Linear(2 * D, config.n_outputs))
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        init_linear_and_norm(self)
        for param in (self.modality_embed, self.summary_token, self.forcing_encoder.month_embed,
                      self.spatial_encoder.pos_embed):
            nn.init.trunc_normal_(param, std=0.02)

    def tokens(self, forcing: torch.Tensor, statics: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
        """-> (B, L, D), L = 1 + T + static_tokens + K*K (summary token first)."""
        cfg = self.config
        expected = {"forcing": (cfg.n_months, cfg.n_forcing), "statics": (cfg.n_static,),
                    "patch": (cfg.n_map, cfg.patch, cfg.patch)}
        for name, value in (("forcing", forcing), ("statics", statics), ("patch", patch)):
            if tuple(value.shape[1:]) != expected[name]:
                raise ValueError(f"{name} must be (B, {', '.join(map(str, expected[name]))}), "
                                 f"got {tuple(value.shape)}")
        parts = [encoder(x) + self.modality_embed[i] for i, (encoder, x) in enumerate(
            ((self.forcing_encoder, forcing), (self.static_encoder, statics), (self.spatial_encoder, patch)))]
        summary = self.summary_token.expand(forcing.shape[0], -1, -1)
        return torch.cat([summary, *parts], dim=1)

    def forward(self, forcing: torch.Tensor, statics: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
        x = self.tokens(forcing, statics, patch)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return self.head(torch.cat([x[:, 0], x[:, 1:].mean(dim=1)], dim=-1))
