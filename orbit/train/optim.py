"""AdamW with decoupled weight decay on matrices only, and a linear-warmup + cosine schedule."""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn


def param_groups(params: Iterable[nn.Parameter], weight_decay: float) -> list[dict]:
    """Decay weight matrices; leave biases, norms and embeddings (1-D tensors) undecayed; frozen
    parameters are left out."""
    decay, no_decay = [], []
    for param in params:
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(params: Iterable[nn.Parameter], lr: float, weight_decay: float,
                    betas: tuple[float, float]) -> torch.optim.Optimizer:
    """AdamW over `params` (e.g. those of the model parts this rank holds: a module, or pipeline stages)."""
    # foreach=False keeps the update order fixed, so a resumed CPU run is bitwise identical.
    return torch.optim.AdamW(param_groups(params, weight_decay), lr=lr, betas=betas, foreach=False)


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, max_steps: int,
                  lr: float, min_lr: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to `lr`, then cosine decay to `min_lr` at `max_steps`."""
    floor = min_lr / lr if lr > 0 else 0.0

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
