"""Analytic FLOPs and memory of an ORBIT model, for throughput/MFU and capacity planning.

FLOPs count matmuls only, 2*m*n*k each (norms, softmax, GELU and adds are ignored; they are
<1% at scale). Training FLOPs = 3 x forward (backward = 2 x forward for matmuls).
Notation: B batch, V input variables, L tokens, k = p*p patch pixels, D width, H_a aggregation
heads, r MLP width, V_out output variables, F lead-time feature size.
"""
from __future__ import annotations

from typing import Any

import torch

from .config import OrbitConfig
from .orbit_vit import OrbitViT
from .registry import get_config


def forward_flops(config: OrbitConfig, batch_size: int = 1, num_input_vars: int | None = None) -> dict[str, int]:
    """Forward FLOPs of one step on `batch_size` samples, by part, plus "total".

    Unfused front end: tokenizer 2VLkD; aggregation 4VLD^2 (K, V) + 4VLD (scores, weighted sum)
    + 2LD^2 (output projection), per sample.
    Fused front end: per sample 2VLH_a k (scores) + 2VLkD (values via M = W_v P) + 2VLD (value
    biases) + 2LD^2; plus, once per step, folding the parameters ("frontend_fold"):
    2D^2 + 2VH_a Dk + 2VDH_a + 2VkD^2 + 2VD^2.
    Blocks: attention 8LD^2 + 4L^2 D, MLP 4LDr per block. Head 2LD V_out k. Lead time 2(FD + D^2).
    """
    V = len(config.variables) if num_input_vars is None else num_input_vars
    L, k, D = config.num_tokens, config.patch_size**2, config.embed_dim
    H_a, r = config.agg_heads, int(config.embed_dim * config.mlp_ratio)
    per_sample = {
        "lead_time": 2 * (config.lead_time_freq_dim * D + D * D),
        "attention": config.depth * (8 * L * D * D + 4 * L * L * D),
        "mlp": config.depth * 4 * L * D * r,
        "head": 2 * L * D * len(config.out_variables) * k,
    }
    per_step = {}
    if config.fused_frontend:
        per_sample["tokenizer"] = 0
        per_sample["aggregation"] = 2 * V * L * H_a * k + 2 * V * L * k * D + 2 * V * L * D + 2 * L * D * D
        per_step["frontend_fold"] = 2 * D * D + 2 * V * H_a * D * k + 2 * V * D * H_a + 2 * V * k * D * D + 2 * V * D * D
    else:
        per_sample["tokenizer"] = 2 * V * L * k * D
        per_sample["aggregation"] = 4 * V * L * D * D + 4 * V * L * D + 2 * L * D * D
    flops = {name: batch_size * value for name, value in per_sample.items()} | per_step
    flops["total"] = sum(flops.values())
    return flops


def _count_params(config: OrbitConfig) -> dict[str, int]:
    """Parameters by pipeline part, counted on the meta device (no memory allocated)."""
    with torch.device("meta"):
        model = OrbitViT(config)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    blocks = count(model.blocks)
    head = count(model.norm) + count(model.head)
    total = count(model)
    return {"embed": total - blocks - head, "blocks": blocks, "head": head, "total": total}


def _memory_bytes(params: int) -> dict[str, dict[str, int]]:
    """Per-replica (unsharded) memory of weights, gradients and AdamW state (2 moments); no activations.

    fp32: fp32 weights, grads, moments. bf16_mixed: fp32 master weights + bf16 compute copy,
    bf16 grads, fp32 moments.
    """
    layouts = {"fp32": (4, 4, 8), "bf16_mixed": (4 + 2, 2, 8)}
    out = {}
    for name, (w, g, o) in layouts.items():
        parts = {"weights": w * params, "grads": g * params, "optimizer": o * params}
        out[name] = parts | {"total": sum(parts.values())}
    return out


def model_info(preset_or_config: str | OrbitConfig, num_input_vars: int | None = None) -> dict[str, Any]:
    """JSON-ready summary: params, tokens, FLOPs per sample (fwd, train), memory per replica."""
    config = get_config(preset_or_config) if isinstance(preset_or_config, str) else preset_or_config
    params = _count_params(config)
    step = forward_flops(config, batch_size=1, num_input_vars=num_input_vars)
    fold = step.get("frontend_fold", 0)
    fwd = step["total"] - fold
    return {
        "name": config.name,
        "config": {key: getattr(config, key) for key in
                   ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "agg_heads",
                    "mlp_ratio", "qk_norm", "fused_frontend")},
        "num_variables": len(config.variables),
        "num_input_variables": len(config.variables) if num_input_vars is None else num_input_vars,
        "num_out_variables": len(config.out_variables),
        "params": params["total"],
        "params_by_part": params,
        "tokens_per_sample": config.num_tokens,
        "flops_per_sample_fwd": fwd,
        "flops_per_sample_train": 3 * fwd,
        "flops_frontend_fold_per_step_fwd": fold,
        "flops_by_part_per_sample_fwd": {key: value for key, value in step.items()
                                         if key not in ("total", "frontend_fold")},
        "memory_bytes_per_replica": _memory_bytes(params["total"]),
    }
