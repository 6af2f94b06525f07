"""The model families of the ORBIT core, each with its parallel plan (see orbit/models/registry.py)."""
from orbit.models.downscale_net import DownscaleViT
from orbit.models.elm_emulator import ElmSpinupEmulator
from orbit.models.orbit_vit import OrbitViT
from orbit.models.orbit_vit_parallel import ORBIT_VIT_PLAN, vit_blocks_plan
from orbit.models.registry import register_family

register_family("orbit_vit", OrbitViT, ORBIT_VIT_PLAN)
register_family("downscale_vit", DownscaleViT, vit_blocks_plan("downscale_vit"))
register_family("elm_emulator", ElmSpinupEmulator, vit_blocks_plan("elm_emulator"))
