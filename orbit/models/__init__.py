"""ORBIT model architecture: config, backbone, presets, analytic FLOPs (no parallelism here)."""
from . import presets as _presets  # noqa: F401  (registers the named presets)
from .config import OrbitConfig
from .flops import forward_flops, model_info
from .orbit_vit import OrbitViT
from .registry import create_model, get_config, list_models, register_model

__all__ = [
    "OrbitConfig",
    "OrbitViT",
    "create_model",
    "forward_flops",
    "get_config",
    "list_models",
    "model_info",
    "register_model",
]
