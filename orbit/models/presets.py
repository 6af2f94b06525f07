"""Model presets: `tiny` for a laptop CPU, and the ORBIT paper's sizes 115M, 1B, 10B, 113B.

ORBIT setting: 91 CMIP6 channels on the 1.40625-degree grid (128 x 256). Patch size 4 (as
ClimaX at 1.40625 degrees) gives a 32 x 64 grid of L = 2048 tokens. Widths/depths are chosen so
each preset lands within a few percent of its nominal size (block params ~ 12 D^2) with head
dims of 64-128; `tests/unit/test_presets_flops.py` checks +-10%.

`ORBIT_VARIABLES` is a 91-name vocabulary with the same shape as ORBIT's (surface fields plus
upper-air fields on pressure levels); rename it to match your data store.
"""
from __future__ import annotations

from .registry import register_model

SURFACE_VARIABLES = ("t2m", "u10", "v10", "msl", "sp", "tcwv", "tp")
UPPER_AIR_VARIABLES = ("z", "t", "u", "v", "q", "r", "w")
PRESSURE_LEVELS_HPA = (50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925)
ORBIT_VARIABLES = SURFACE_VARIABLES + tuple(
    f"{name}{level}" for name in UPPER_AIR_VARIABLES for level in PRESSURE_LEVELS_HPA
)
ORBIT_IMG_SIZE = (128, 256)
ORBIT_PATCH_SIZE = 4

TINY_VARIABLES = ("t2m", "u10", "v10", "msl", "z500", "t850", "u850", "v850", "q850")


def _orbit(embed_dim: int, depth: int, num_heads: int) -> dict:
    return dict(variables=ORBIT_VARIABLES, img_size=ORBIT_IMG_SIZE, patch_size=ORBIT_PATCH_SIZE,
                embed_dim=embed_dim, depth=depth, num_heads=num_heads, qk_norm=True)


@register_model("tiny")
def tiny() -> dict:
    """~1.5M params, 5.625-degree grid (32 x 64) with patch 4 -> 128 tokens: trains on a 2-core CPU."""
    return dict(variables=TINY_VARIABLES, img_size=(32, 64), patch_size=4,
                embed_dim=128, depth=6, num_heads=4, qk_norm=True)


@register_model("115m")
def orbit_115m() -> dict:
    return _orbit(embed_dim=1024, depth=8, num_heads=16)


@register_model("1b")
def orbit_1b() -> dict:
    return _orbit(embed_dim=2048, depth=20, num_heads=16)


@register_model("10b")
def orbit_10b() -> dict:
    return _orbit(embed_dim=5120, depth=32, num_heads=40)


@register_model("113b")
def orbit_113b() -> dict:
    return _orbit(embed_dim=12288, depth=62, num_heads=96)
