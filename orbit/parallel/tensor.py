"""Tensor-parallel tools on DTensor that any model family's plan can use (Megatron-style).

A family's plan shards its layers with torch's `ColwiseParallel` / `RowwiseParallel` (see
`orbit/models/orbit_vit_parallel.py`); the helpers here cover what those styles do not:
`replicate_the_rest` makes every parameter no style touched a Replicate DTensor (so optimizers'
foreach kernels, gradient clipping, FSDP2 and DCP see one kind of parameter) while the module's own
code computes on local tensors; `distribute_parameter` cuts one parameter into a DTensor;
`on_local_tensors` runs a method with DTensor parameters replaced by their local shards;
`sum_grad_over` is Megatron's "f" (identity forward, gradient summed over tp in backward).
"""
from __future__ import annotations

from types import MethodType

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Partial, Replicate, distribute_tensor

from orbit.parallel.compat import parameters_replaced


def replicate_the_rest(owner: nn.Module, mesh: DeviceMesh) -> None:
    """Make the parameters of `owner` that no plan touched Replicate DTensors, and run
    `owner.forward` on their local tensors. Their gradients are already equal on all tp ranks (the
    sharded layers sum their input gradients over tp), so they come back as Replicate DTensors with
    no communication. Done per block, not once at the root, because FSDP re-registers each block's
    parameters when that block runs."""
    names = [name for name, param in owner.named_parameters() if not isinstance(param, DTensor)]
    for name in names:
        distribute_parameter(owner, name, mesh, Replicate(), src_data_rank=0)
    if names:
        owner.forward = MethodType(on_local_tensors(type(owner).forward, names), owner)


def distribute_parameter(module: nn.Module, name: str, mesh: DeviceMesh, placement, src_data_rank: int | None):
    """Replace the parameter `name` (dotted) by a DTensor cut from rank `src_data_rank`'s values."""
    owner_name, _, attr = name.rpartition(".")
    owner, param = module.get_submodule(owner_name), module.get_parameter(name)
    shard = distribute_tensor(param.detach(), mesh, [placement], src_data_rank=src_data_rank)
    setattr(owner, attr, nn.Parameter(shard, requires_grad=param.requires_grad))


def on_local_tensors(method, names: list[str], sum_input_grads_over: DeviceMesh | None = None):
    """Wrap an unbound method to run with the DTensor parameters `names` replaced by their local
    tensors (differentiably: gradients flow back to the DTensors). With `sum_input_grads_over`,
    the gradients of its tensor arguments are summed over that mesh (see `sum_grad_over`)."""

    def run(self: nn.Module, *args, **kwargs):
        local = {name: self.get_parameter(name).to_local() for name in names}
        if sum_input_grads_over is not None:
            args = tuple(sum_grad_over(sum_input_grads_over, a) for a in args)
            kwargs = {key: sum_grad_over(sum_input_grads_over, value) for key, value in kwargs.items()}
        with parameters_replaced(self, local):
            return method(self, *args, **kwargs)

    return run


def sum_grad_over(mesh: DeviceMesh, value):
    """Identity in forward; in backward, the gradient is summed over the tp ranks (Megatron's "f")."""
    if not (isinstance(value, torch.Tensor) and value.requires_grad):
        return value
    return DTensor.from_local(value, mesh, [Replicate()], run_check=False).to_local(grad_placements=[Partial()])
