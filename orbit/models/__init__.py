"""ORBIT model architecture: config, backbone, presets, analytic FLOPs (no parallelism here)."""
from . import families as _families  # noqa: F401  (registers the model families)
from . import presets as _presets  # noqa: F401  (registers the named presets)
from .config import OrbitConfig
from .flops import forward_flops, model_info
from .orbit_vit import OrbitViT
from .registry import (create_model, family_of, get_config, get_family, list_families, list_models,
                       register_family, register_model)

__all__ = [
    "OrbitConfig",
    "OrbitViT",
    "create_model",
    "family_of",
    "get_family",
    "list_families",
    "register_family",
    "forward_flops",
    "get_config",
    "list_models",
    "model_info",
    "register_model",
]
