"""The ViT weight initialization every ORBIT model starts from."""
from __future__ import annotations

from torch import nn


def init_linear_and_norm(module: nn.Module) -> None:
    """Truncated-normal (std 0.02) weights and zero biases for every Linear in `module`, unit
    LayerNorms (as timm's ViT); other layers keep their own initialization."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            nn.init.trunc_normal_(sub.weight, std=0.02)
            nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.LayerNorm):
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)
