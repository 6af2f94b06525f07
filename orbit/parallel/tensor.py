"""Tensor parallelism (Megatron-style column/row sharding on DTensor) for ORBIT.

Each tp rank holds whole attention heads and a slice of the MLP; one all-reduce per attention,
one per MLP and one in the variable aggregation in forward (and as many in backward). Everything
else (tokenizer, embeddings, norms, head) is replicated, and the module's inputs and outputs are
plain tensors, identical on every tp rank.

Afterwards every parameter is a DTensor on the tp mesh (sharded or replicated): optimizers'
foreach kernels, gradient clipping, FSDP2 and DCP then see one kind of parameter. Code inside
the model computes on local tensors; only the module's `forward` is the entry point (call the
module, not `embed`/`forward_head` directly).
"""
from __future__ import annotations

from types import MethodType

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from ..models.layers.aggregation import VariableAggregation
from ..models.layers.block import Block
from .compat import parameters_replaced


def apply_tensor_parallel(module: nn.Module, tp_mesh: DeviceMesh) -> nn.Module:
    """Shard, in place, every `Block` and `VariableAggregation` inside `module` over `tp_mesh` (1-D).

    Works on a whole `OrbitViT` or on a pipeline-stage module holding some of them. Run it after
    the weights are initialized (shards are cut from rank 0's values) and before FSDP.
    """
    blocks = [m for m in module.modules() if isinstance(m, Block)]
    aggregations = [m for m in module.modules() if isinstance(m, VariableAggregation)]
    _check_heads_divisible(blocks, aggregations, tp_mesh.size())
    for block in blocks:
        parallelize_module(block, tp_mesh, _block_plan(block))
    for aggregation in aggregations:
        parallelize_module(aggregation, tp_mesh, HeadParallelAggregation())
    for owner in (*blocks, module):  # blocks first, so the root only takes what is left
        _replicate_the_rest(owner, tp_mesh)
    return module


def _check_heads_divisible(blocks: list[Block], aggregations: list[VariableAggregation], tp: int) -> None:
    heads = {f"num_heads of Block {i}": b.attn.q_proj.out_features // b.attn.head_dim for i, b in enumerate(blocks)}
    heads |= {"agg_heads of the variable aggregation": a.query.numel() // a.head_dim for a in aggregations}
    bad = {name: h for name, h in heads.items() if h % tp}
    if bad:
        raise ValueError(f"tensor parallel degree tp={tp} must divide every head count (each tp rank holds "
                         f"whole heads), got {bad}; choose tp among the common divisors of "
                         f"{sorted(set(heads.values()))}")


def _block_plan(block: Block) -> dict[str, ParallelStyle]:
    """q/k/v by output columns (whole heads: they are separate projections), proj by input rows;
    fc1 by columns, fc2 by rows.

    QK-norm is a LayerNorm over head_dim applied to (B, h, L, d): it runs unchanged on the local
    heads, and `SequenceParallel(sequence_dim=1)` (sharded along dim 1, here the head dim) keeps
    its weights replicated while summing their gradients over the heads of all tp ranks.
    """
    plan: dict[str, ParallelStyle] = {f"attn.{name}": ColwiseParallel() for name in ("q_proj", "k_proj", "v_proj")}
    plan["attn.proj"] = RowwiseParallel()
    plan["mlp.fc1"] = ColwiseParallel()
    plan["mlp.fc2"] = RowwiseParallel()
    for name in ("q_norm", "k_norm"):
        if any(True for _ in getattr(block.attn, name).parameters()):
            plan[f"attn.{name}"] = SequenceParallel(sequence_dim=1, use_local_output=True)
    return plan


class HeadParallelAggregation(ParallelStyle):
    """Shard `VariableAggregation` by heads: query, k_proj and v_proj by rows (Shard(0): whole
    heads, since rows are head-major), proj row-wise (all-reduce of the per-head outputs).

    Both `forward` and `forward_fused` read these parameters directly (the fused path folds them
    into per-head p²-vectors and matrices), so they run the model's own code on the local shards.
    Their tensor inputs are replicated over tp and each rank contributes the gradient through its
    own heads, so those gradients are summed over tp in backward.
    """

    head_sharded = ("query", "k_proj.weight", "k_proj.bias", "v_proj.weight", "v_proj.bias")

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        for name in self.head_sharded:
            _distribute_parameter(module, name, device_mesh, Shard(0), self.src_data_rank)
        parallelize_module(module.proj, device_mesh, RowwiseParallel())
        for method in ("forward", "forward_fused"):
            wrapped = _on_local_tensors(getattr(type(module), method), list(self.head_sharded), device_mesh)
            setattr(module, method, MethodType(wrapped, module))
        return module


def _replicate_the_rest(owner: nn.Module, mesh: DeviceMesh) -> None:
    """Make the parameters of `owner` that no plan touched Replicate DTensors, and run
    `owner.forward` on their local tensors. Their gradients are already equal on all tp ranks (the
    sharded layers sum their input gradients over tp), so they come back as Replicate DTensors with
    no communication. Done per block, not once at the root, because FSDP re-registers each block's
    parameters when that block runs."""
    names = [name for name, param in owner.named_parameters() if not isinstance(param, DTensor)]
    for name in names:
        _distribute_parameter(owner, name, mesh, Replicate(), src_data_rank=0)
    if names:
        owner.forward = MethodType(_on_local_tensors(type(owner).forward, names), owner)


def _distribute_parameter(module: nn.Module, name: str, mesh: DeviceMesh, placement, src_data_rank: int | None):
    """Replace the parameter `name` (dotted) by a DTensor cut from rank `src_data_rank`'s values."""
    owner_name, _, attr = name.rpartition(".")
    owner, param = module.get_submodule(owner_name), module.get_parameter(name)
    shard = distribute_tensor(param.detach(), mesh, [placement], src_data_rank=src_data_rank)
    setattr(owner, attr, nn.Parameter(shard, requires_grad=param.requires_grad))


def _on_local_tensors(method, names: list[str], sum_input_grads_over: DeviceMesh | None = None):
    """Wrap an unbound method to run with the DTensor parameters `names` replaced by their local
    tensors (differentiably: gradients flow back to the DTensors). With `sum_input_grads_over`,
    the gradients of its tensor arguments are summed over that mesh (see `_sum_grad_over`)."""

    def run(self: nn.Module, *args, **kwargs):
        local = {name: self.get_parameter(name).to_local() for name in names}
        if sum_input_grads_over is not None:
            args = tuple(_sum_grad_over(sum_input_grads_over, a) for a in args)
            kwargs = {key: _sum_grad_over(sum_input_grads_over, value) for key, value in kwargs.items()}
        with parameters_replaced(self, local):
            return method(self, *args, **kwargs)

    return run


def _sum_grad_over(mesh: DeviceMesh, value):
    """Identity in forward; in backward, the gradient is summed over the tp ranks (Megatron's "f")."""
    if not (isinstance(value, torch.Tensor) and value.requires_grad):
        return value
    return DTensor.from_local(value, mesh, [Replicate()], run_check=False).to_local(grad_placements=[Partial()])
