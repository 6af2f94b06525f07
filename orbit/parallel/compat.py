"""The private or fast-moving PyTorch APIs that tensor and sequence parallelism use, in one place.

When PyTorch renames or moves one of these, only this module changes.
- functional collectives (`torch.distributed._functional_collectives`): collectives on a
  DeviceMesh that return new tensors, with autograd, traceable by torch.compile;
- `torch.nn.utils.stateless._reparametrize_module`: run a module's own code with some of its
  parameters temporarily replaced (here: by their local tensor-parallel shards).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.distributed._functional_collectives as funcol
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.nn.utils.stateless import _reparametrize_module


def all_to_all_single(tensor: torch.Tensor, mesh: DeviceMesh) -> torch.Tensor:
    """Even all-to-all over a 1-D mesh along dim 0, differentiable (its backward is the reverse
    all-to-all). tensor: (n * c, ...) -> (n * c, ...) where chunk j of dim 0 went to rank j and
    chunk i of the result came from rank i."""
    return funcol.wait_tensor(funcol.all_to_all_single(tensor.contiguous(), None, None, mesh))


def all_gather(tensor: torch.Tensor, dim: int, mesh: DeviceMesh) -> torch.Tensor:
    """Concatenate every rank's `tensor` along `dim` in rank order (not differentiable here:
    callers define the backward they need)."""
    return funcol.wait_tensor(funcol.all_gather_single(tensor.contiguous(), dim, mesh))


@contextmanager
def parameters_replaced(module: nn.Module, tensors: dict[str, torch.Tensor]) -> Iterator[None]:
    """Within the block, `module.<name>` (dotted names) reads `tensors[name]` instead of the
    registered parameter; the parameters themselves are untouched and restored on exit."""
    with _reparametrize_module(module, tensors):
        yield
