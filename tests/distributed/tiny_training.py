"""Shared pieces of the sharded-data-parallel and checkpoint tests: a tiny ORBIT, fixed global
batches, each data rank's slice of them, AdamW steps, and how runs are compared.

Every rank builds the same model from the same seed, so sharding splits identical weights; a data
rank trains on its contiguous slice of the global batch with the local mean loss, and averaging
the gradients over data ranks (what FSDP / ZeRO do) gives the gradient of the global-batch loss.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from orbit.models import create_model

VARIABLES = ("t2m", "u10", "v10", "z500")
GLOBAL_BATCH = 8
LR = 1e-2


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return create_model("tiny", variables=VARIABLES, img_size=(8, 16), patch_size=2, embed_dim=32, depth=2,
                        num_heads=4)


def adamw(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.05, foreach=False)


def global_batch(step: int) -> tuple[tuple, torch.Tensor]:
    """Inputs for `model(*inputs)` (x: (B, V, H, W), var_ids, lead_hours: (B,), var_mask: (B, V)) and
    a target (B, V, H, W); B = GLOBAL_BATCH. Sample 1 lacks variable 2."""
    gen = torch.Generator().manual_seed(100 + step)
    x = torch.randn(GLOBAL_BATCH, len(VARIABLES), 8, 16, generator=gen)
    var_mask = torch.ones(GLOBAL_BATCH, len(VARIABLES), dtype=torch.bool)
    var_mask[1, 2] = False
    lead_hours = torch.linspace(6.0, 48.0, GLOBAL_BATCH)
    inputs = (x, torch.arange(len(VARIABLES)), lead_hours, var_mask)
    return inputs, torch.randn(GLOBAL_BATCH, len(VARIABLES), 8, 16, generator=gen)


def local_batch(step: int, dp_rank: int, dp_size: int) -> tuple[tuple, torch.Tensor]:
    """Data rank `dp_rank`'s contiguous slice of the global batch (var_ids stays whole)."""
    inputs, target = global_batch(step)
    size = GLOBAL_BATCH // dp_size
    rows = slice(dp_rank * size, (dp_rank + 1) * size)
    x, var_ids, lead_hours, var_mask = inputs
    return (x[rows], var_ids, lead_hours[rows], var_mask[rows]), target[rows]


def mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (output - target).pow(2).mean()


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, steps: range, dp_rank: int = 0,
                dp_size: int = 1, grad_clip: float | None = None) -> list[float]:
    """AdamW steps on this rank's slices; returns the local losses (one per step)."""
    losses = []
    for step in steps:
        inputs, target = local_batch(step, dp_rank, dp_size)
        loss = mse(model(*inputs), target)
        loss.backward()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t


def first_step_grads(model: nn.Module) -> dict[str, torch.Tensor]:
    """Gradients of the global-batch loss at the initial weights (model left unchanged)."""
    inputs, target = global_batch(0)
    mse(model(*inputs), target).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    return grads


def zero_gradient_params(grads: dict[str, torch.Tensor], threshold: float = 1e-8) -> set[str]:
    """Parameters whose exact gradient is zero: the k_norm bias and the aggregation's key bias add
    the same q.b to every attention score, which softmax ignores. Their computed gradients are
    rounding noise, which AdamW turns into arbitrary steps of size ~lr, so they are compared only
    through the whole parameter vector."""
    scale = torch.cat([g.flatten() for g in grads.values()]).norm()
    return {name for name, g in grads.items() if g.norm() <= threshold * scale}


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


def param_errors(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                 skip: set[str]) -> tuple[float, float, float]:
    """Against the reference: (relative error of the vector of all parameters not in `skip`, worst
    relative error of one such tensor, largest absolute difference of a `skip` element)."""
    assert actual.keys() == expected.keys(), sorted(set(actual) ^ set(expected))
    names = [n for n in expected if n not in skip]
    whole = rel_err(torch.cat([actual[n].flatten() for n in names]), torch.cat([expected[n].flatten() for n in names]))
    worst = max(rel_err(actual[n], expected[n]) for n in names)
    skipped = max(((actual[n] - expected[n]).abs().max().item() for n in skip), default=0.0)
    return whole, worst, skipped
