"""The model families of the ORBIT core, each with its parallel plan and a tiny example for the tests."""
import torch

from orbit.models.downscale_net import DownscaleViT
from orbit.models.elm_emulator import ElmEmulatorConfig, ElmSpinupEmulator
from orbit.models.orbit_vit import OrbitViT
from orbit.models.orbit_vit_parallel import ORBIT_VIT_PLAN, vit_blocks_plan
from orbit.models.registry import get_config, register_family

_TINY = dict(embed_dim=32, depth=2, num_heads=2)


def _orbit_vit_example():
    model = OrbitViT(get_config("tiny", variables=("t2m", "z500", "u10"), img_size=(8, 16), patch_size=4, **_TINY))
    return model, (torch.randn(2, 3, 8, 16), None, torch.tensor([6.0, 24.0]), None)


def _downscale_example():
    config = get_config("tiny", variables=("t2m", "tp"), img_size=(16, 32), patch_size=4, **_TINY)
    model = DownscaleViT(config, scale=2, num_statics=2, head_features=8, refine_hidden=8)
    return model, (torch.randn(2, 2, 8, 16), torch.randn(2, 2, 16, 32))


def _elm_example():
    config = ElmEmulatorConfig(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, qk_norm=True, n_months=12,
                               n_forcing=3, n_static=4, n_map=2, patch=3, n_outputs=5, static_tokens=2)
    return ElmSpinupEmulator(config), (torch.randn(2, 12, 3), torch.randn(2, 4), torch.randn(2, 2, 3, 3))


register_family("orbit_vit", OrbitViT, ORBIT_VIT_PLAN, example=_orbit_vit_example,
                backbone=("blocks",), head=("norm", "head"))
register_family("downscale_vit", DownscaleViT, vit_blocks_plan("downscale_vit"), example=_downscale_example,
                backbone=("blocks",), head=("embed", "head", "refine"))
register_family("elm_emulator", ElmSpinupEmulator, vit_blocks_plan("elm_emulator"), example=_elm_example,
                backbone=("blocks",), head=("norm", "head"))
