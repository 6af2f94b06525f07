"""ORBIT-2 style downscaling model: coarse fields + high-resolution statics in, s-times finer fields out.

The pretrained transformer `blocks` are kept; what depends on the grids is new:

  x_up   = bicubic(coarse)                                  (B, C, sH, sW)  the smooth first guess
  inputs = [x_up, statics]                                  (B, C + S, sH, sW)
  tokens = embed(inputs) + pos                              (B, L, D)  one token per p x p fine cells
  tokens = norm(blocks(tokens))                             (B, L, D)
  feats  = head(tokens)                                     (B, F, sH, sW)  1x1 conv + pixel shuffle (x p)
  output = x_up + refine([feats, inputs])                   (B, C, sH, sW)  residual conv path

The transformer sees the whole globe at token resolution and decides what the fine detail looks
like; the convolutional path works at full resolution, where the static orography and coastlines
are sharp, and only adds a correction to the interpolated input, so an untrained model already
starts from the bicubic baseline. Convolutions wrap around in longitude and repeat the edge rows
at the poles.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from orbit.models.config import OrbitConfig
from orbit.models.layers import Block, sincos_pos_embed_2d
from orbit.models.layers.init import init_linear_and_norm


def pad_sphere(x: torch.Tensor, width: int) -> torch.Tensor:
    """Pad a global lat-lon field x: (B, C, H, W) by `width` cells: periodic in lon, edge rows in lat."""
    x = F.pad(x, (width, width, 0, 0), mode="circular")
    return F.pad(x, (0, 0, width, width), mode="replicate")


def upsample_bicubic(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic interpolation of cell-centred global fields, x: (B, C, H, W) -> (B, C, sH, sW).

    Fine cells nest in the coarse ones (the coarse grid is the block mean of the fine one); lon is
    periodic, lat repeats the edge rows beyond the outermost centres. This is also the baseline.
    """
    pad = 2  # the cubic kernel reaches two coarse cells
    up = F.interpolate(pad_sphere(x, pad), scale_factor=scale, mode="bicubic", align_corners=False)
    return up[..., pad * scale:-pad * scale, pad * scale:-pad * scale]


class SphereConv(nn.Module):
    """3x3 convolution on a global grid (lon periodic, poles edge-padded): (B, Ci, H, W) -> (B, Co, H, W)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(pad_sphere(x, 1))


class PixelShuffleHead(nn.Module):
    """tokens (B, L, D) on a (h, w) token grid -> features (B, F, h p, w p): 1x1 conv then pixel shuffle."""

    def __init__(self, embed_dim: int, features: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(embed_dim, features * patch_size**2, kernel_size=1)
        self.shuffle = nn.PixelShuffle(patch_size)

    def forward(self, tokens: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        grid = rearrange(tokens, "b (h w) d -> b d h w", h=grid_size[0], w=grid_size[1])
        return self.shuffle(self.proj(grid))


class ResidualRefiner(nn.Module):
    """Full-resolution conv path: [features, inputs] (B, F + C + S, H, W) -> correction (B, C, H, W)."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int):
        super().__init__()
        self.layers = nn.Sequential(SphereConv(in_channels, hidden), nn.GELU(), SphereConv(hidden, hidden),
                                    nn.GELU(), SphereConv(hidden, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DownscaleViT(nn.Module):
    """Downscaling ViT. `config` is the backbone's OrbitConfig on the FINE grid: `img_size` the fine
    grid, `patch_size` the fine cells per token side, `variables` the C output channels (also the
    coarse input channels, in order). `num_statics` static fine fields are extra inputs.

    Parameter names: `embed.*`, `blocks.*`, `norm.*`, `head.*`, `refine.*`; `blocks` and `norm` have
    the shapes of `OrbitViT`'s, so they load from a pretrained ORBIT checkpoint of the same width.
    """

    def __init__(self, config: OrbitConfig, scale: int, num_statics: int, head_features: int = 32,
                 refine_hidden: int = 48):
        super().__init__()
        h, w = config.img_size
        if scale < 1 or h % scale or w % scale:
            raise ValueError(f"scale must be a positive divisor of the fine grid {config.img_size}, got {scale}")
        self.config, self.scale = config, scale
        channels, D, p = len(config.variables), config.embed_dim, config.patch_size
        inputs = channels + num_statics
        self.embed = nn.Conv2d(inputs, D, kernel_size=p, stride=p)
        self.register_buffer("pos_embed", torch.empty(config.num_tokens, D), persistent=False)
        self.blocks = nn.ModuleList(
            Block(D, config.num_heads, config.mlp_ratio, config.qk_norm, config.drop_path)
            for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(D)
        self.head = PixelShuffleHead(D, head_features, p)
        self.refine = ResidualRefiner(head_features + inputs, refine_hidden, channels)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Fresh weights; the last conv starts at zero so the untrained model is the bicubic baseline."""
        self.pos_embed.copy_(sincos_pos_embed_2d(self.config.grid_size, self.config.embed_dim))
        init_linear_and_norm(self)
        last = self.refine.layers[-1].conv
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def _check_inputs(self, coarse: torch.Tensor, statics: torch.Tensor) -> None:
        h, w = self.config.img_size
        expected = (len(self.config.variables), h // self.scale, w // self.scale)
        if coarse.dim() != 4 or tuple(coarse.shape[1:]) != expected:
            raise ValueError(f"coarse must be (B, C, H, W) = (B, {', '.join(map(str, expected))}), "
                             f"got {tuple(coarse.shape)}")
        if statics.dim() != 4 or statics.shape[0] != coarse.shape[0] or tuple(statics.shape[-2:]) != (h, w):
            raise ValueError(f"statics must be (B, S, {h}, {w}) with B = {coarse.shape[0]}, got {tuple(statics.shape)}")

    def forward(self, coarse: torch.Tensor, statics: torch.Tensor) -> torch.Tensor:
        """coarse: (B, C, H, W) normalized; statics: (B, S, sH, sW) normalized -> fine (B, C, sH, sW)."""
        self._check_inputs(coarse, statics)
        first_guess = upsample_bicubic(coarse, self.scale)
        inputs = torch.cat([first_guess, statics.to(first_guess)], dim=1)
        tokens = self.embed(inputs).flatten(2).transpose(1, 2) + self.pos_embed
        for block in self.blocks:
            tokens = block(tokens)
        features = self.head(self.norm(tokens), self.config.grid_size)
        return first_guess + self.refine(torch.cat([features, inputs], dim=1))
