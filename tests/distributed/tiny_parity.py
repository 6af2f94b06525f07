"""Shared pieces of the parallel parity tests: a tiny ORBIT, fixed data, a 3-step AdamW run and
the comparison against one process with the tolerances reached."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from orbit.models import create_model

VARIABLES = ("t2m", "u10", "v10", "z500", "q700")
# Relative L2 errors ||a - b|| / ||b|| (per tensor unless said otherwise) reached here: outputs and
# losses ~1e-7, gradients <= ~3e-6, all parameters after 3 AdamW steps (one vector) ~1e-6; single
# parameter tensors after AdamW <= ~5e-5 (Adam divides each element by its own gradient scale, so
# zero-initialized biases inherit the relative rounding error of their smallest gradient elements).
FP32_RTOL = 1e-5
FP32_PARAM_TENSOR_RTOL = 2e-4
BF16_RTOL = 3e-2
# Parameters whose exact gradient is zero: the k_norm bias and the aggregation's key bias add the
# same q.b to every attention score, which softmax ignores. Their gradients are rounding noise on both
# sides (below ZERO_GRAD * the whole gradient's norm), which AdamW turns into arbitrary steps.
ZERO_GRAD = 1e-8


def tiny_model(fused: bool) -> nn.Module:
    torch.manual_seed(0)
    return create_model("tiny", variables=VARIABLES, img_size=(8, 16), patch_size=2, embed_dim=32, depth=2,
                        num_heads=4, qk_norm=True, fused_frontend=fused)


def fixed_batch(step: int) -> tuple[tuple, torch.Tensor]:
    """Inputs for `model(*inputs)` and a target; the second sample lacks one variable."""
    gen = torch.Generator().manual_seed(100 + step)
    x = torch.randn(2, len(VARIABLES), 8, 16, generator=gen)
    var_mask = torch.ones(2, len(VARIABLES), dtype=torch.bool)
    var_mask[1, 2] = False
    inputs = (x, torch.arange(len(VARIABLES)), torch.tensor([6.0, 24.0]), var_mask)
    return inputs, torch.randn(2, len(VARIABLES), 8, 16, generator=gen)


def full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((full(actual).double() - expected.double()).norm() / expected.double().norm()).item()


def vector(tensors: dict) -> torch.Tensor:
    return torch.cat([full(t).double().flatten() for t in tensors.values()])


def train(model: nn.Module, steps: int = 3, sync_grads: Callable[[nn.Module], None] | None = None) -> dict:
    """Output and gradients of the first step, then the losses of `steps` AdamW steps and the
    final parameters. `sync_grads(model)` runs after each backward (e.g. to average over sp ranks)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    record = {"losses": []}
    for step in range(steps):
        inputs, target = fixed_batch(step)
        output = model(*inputs)
        loss = (output - target).pow(2).mean()
        loss.backward()
        if sync_grads is not None:
            sync_grads(model)
        if step == 0:
            record["output"] = output.detach()
            record["grads"] = {n: full(p.grad) for n, p in model.named_parameters()}
        optimizer.step()
        optimizer.zero_grad()
        record["losses"].append(loss.detach())
    record["params"] = {n: full(p.detach()) for n, p in model.named_parameters()}
    return record


def compare(actual: dict, expected: dict) -> dict:
    """Worst relative errors of a run against the reference run (see the tolerances above)."""
    assert actual["grads"].keys() == expected["grads"].keys()
    scale = vector(expected["grads"]).norm().item()
    zero = {n for n, g in expected["grads"].items() if g.norm() <= ZERO_GRAD * scale}
    assert zero and all(full(actual["grads"][n]).norm() <= ZERO_GRAD * scale for n in zero), zero
    learned = [n for n in expected["grads"] if n not in zero]
    return {
        "output": rel_err(actual["output"], expected["output"]),
        "losses": rel_err(torch.stack(actual["losses"]), torch.stack(expected["losses"])),
        "grads": max(rel_err(actual["grads"][n], expected["grads"][n]) for n in learned),
        "params": rel_err(vector(actual["params"]), vector(expected["params"])),
        "param_tensor": max(rel_err(actual["params"][n], expected["params"][n]) for n in learned),
    }


def within_tolerance(errors: dict) -> bool:
    return (max(errors[k] for k in ("output", "losses", "grads", "params")) < FP32_RTOL
            and errors["param_tensor"] < FP32_PARAM_TENSOR_RTOL)
