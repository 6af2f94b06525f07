"""Apply Hybrid-STOP to a model in one fixed order and drive it for the trainer.

Order (as torchtitan's `parallelize`): pipeline split -> tensor parallel -> sequence parallel ->
activation checkpointing -> compile -> FSDP. Each step works on the stage modules the previous
one produced, so any subset of axes composes; the trainer only ever sees the engine interface
(orbit/parallel/engine.py). `parallel.engine: deepspeed` swaps the whole chain for DeepSpeed ZeRO
on pure data-parallel layouts.
"""
from __future__ import annotations

from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from orbit.parallel.env import launched_world_size
from orbit.parallel.engine import LocalEngine, LossFn, OptimizerFactory, TorchOptimizerEngine, to_device
from orbit.parallel.mesh import ParallelDims, parallel_dims_from
from orbit.parallel.pipeline import build_schedule, pipeline_forward, pipeline_step
from orbit.parallel.plans import ParallelPlan
from orbit.parallel.sharding import ZeroEngine, apply_fsdp, build_deepspeed_engine
from orbit.parallel.units import wrap_units


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else launched_world_size()


def validate_layout(plan: ParallelPlan, model: nn.Module, dims: ParallelDims, parallel_cfg, batch_size: int) -> None:
    """Errors a user can fix in the config, raised before any collective is issued."""
    problems = plan.problems(model, dims, parallel_cfg, batch_size)
    if problems:
        raise ValueError("invalid parallel layout " + str(dims.degrees) + ": " + "; ".join(problems))


class ParallelEngine(TorchOptimizerEngine):
    """This rank's share of the model on a named mesh, and how to run a step on it.

    `make_optimizer` is called on the parallelized parts (FSDP replaces the parameters); without it
    the caller steps its own optimizer (`optimizer` is None).
    """

    distributed = True

    def __init__(self, model: nn.Module, plan: ParallelPlan, dims: ParallelDims, parallel_cfg, *, loss_fn: LossFn,
                 precision: str, activation_checkpointing: bool, device: str | torch.device = "cpu",
                 make_optimizer: OptimizerFactory | None = None):
        self.dims = dims
        self.device = torch.device(device)
        model.to(self.device)  # before sharding: DTensor/FSDP keep parameters where they find them
        self.mesh = mesh = dims.build_mesh(self.device.type)
        self.dp_rank, self.dp_size = mesh["dp"].get_local_rank(), dims.dp
        self.is_main = dist.get_rank() == 0
        parts = plan.pipeline_split(model, mesh["pp"], stages_per_rank=parallel_cfg.pp_stages_per_rank) \
            if dims.pp > 1 else [model]
        for part in parts:
            if dims.tp > 1:
                plan.tensor_parallel(part, mesh["tp"])
            if dims.sp > 1:
                plan.sequence_parallel(part, mesh["sp"])
            wrap_units(part, plan, activation_checkpointing=activation_checkpointing, compile=parallel_cfg.compile)
        if mesh["dp_replicate", "dp_shard_sp"].size() > 1:
            apply_fsdp(parts, mesh, dims, plan, param_dtype=torch.bfloat16 if precision == "bf16" else None)
        self.parts = parts
        self.pipeline = None
        if dims.pp > 1:
            microbatches = parallel_cfg.pp_microbatches or dims.pp * parallel_cfg.pp_stages_per_rank
            self.pipeline = build_schedule(parts, mesh["pp"], schedule=parallel_cfg.pp_schedule,
                                           microbatches=microbatches, loss_fn=loss_fn,
                                           input_names=plan.pipeline_inputs,
                                           check_inputs=plan.check_pipeline_inputs)
        self.loss_fn = loss_fn
        self.optimizer = make_optimizer(parts) if make_optimizer is not None else None

    def parameters(self) -> Iterator[nn.Parameter]:
        for part in self.parts:
            yield from part.parameters()

    def train(self, mode: bool = True) -> None:
        for part in self.parts:
            part.train(mode)

    def forward_backward(self, inputs: tuple, batch: Any, scale: float = 1.0) -> torch.Tensor:
        inputs, batch = to_device(inputs, self.device), to_device(batch, self.device)
        if self.pipeline is not None:
            return pipeline_step(self.pipeline, self.mesh["pp"], inputs, batch, scale=scale)
        loss = self.loss_fn(self.parts[0](*inputs), batch)
        (loss * scale).backward()
        return loss.detach()

    def forward(self, inputs: tuple) -> Any:
        """The model's output on this engine's device, on every rank."""
        inputs = to_device(inputs, self.device)
        if self.pipeline is not None:
            return pipeline_forward(self.pipeline, self.mesh["pp"], inputs)
        return self.parts[0](*inputs)

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Global gradient norm over every shard and stage, then clip (as torchtitan does)."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        if self.dims.pp > 1:
            squared = norm.pow(2)
            dist.all_reduce(squared, group=self.mesh["pp"].get_group())
            norm = squared.sqrt()
        torch.nn.utils.clip_grads_with_norm_(list(self.parameters()), max_norm, norm)
        return norm.detach()

    def mean_over_data_ranks(self, value: torch.Tensor) -> torch.Tensor:
        """Reduced on the engine's device (NCCL reduces GPU tensors only), and left there."""
        value = value.detach().to(self.device, copy=True)
        dist.all_reduce(value, op=dist.ReduceOp.AVG, group=self.mesh["dp"].get_group())
        return value

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Unsharded parameters by the plain model's names, on every rank (tests, export)."""
        options = StateDictOptions(full_state_dict=True, cpu_offload=False)
        local: dict[str, torch.Tensor] = {}
        for part in self.parts:
            local.update(get_model_state_dict(part, options=options))
        if self.dims.pp == 1:
            return local
        gathered: list[dict] = [None] * self.dims.pp  # type: ignore[list-item]
        dist.all_gather_object(gathered, local, group=self.mesh["pp"].get_group())
        return {k: v for shard in gathered for k, v in shard.items()}


def build_engine(model: nn.Module, parallel_cfg, *, plan: ParallelPlan, loss_fn: LossFn, precision: str,
                 activation_checkpointing: bool, batch_size: int, make_optimizer: OptimizerFactory | None = None,
                 grad_clip: float = 0.0, grad_accum_steps: int = 1, device: str | torch.device = "cpu"):
    """LocalEngine for one process; on several, ParallelEngine on a mesh, or ZeroEngine when
    `parallel_cfg.engine == "deepspeed"` (which needs `make_optimizer`, and takes `grad_clip`
    (0 = none) and `grad_accum_steps` into DeepSpeed's config because its engine steps itself).
    `plan` is the model family's (`orbit.models.registry.family_of(model).plan`); `loss_fn(output,
    batch)` the task's loss; `batch_size` the per-data-rank micro-batch; `device` this rank's
    (`LaunchInfo.device`). The layout is checked against the plan before any collective."""
    size = world_size()
    dims = parallel_dims_from(parallel_cfg, size)
    validate_layout(plan, model, dims, parallel_cfg, batch_size)
    if size == 1:  # nothing to shard or replicate: every engine reduces to the plain model
        wrap_units(model, plan, activation_checkpointing=activation_checkpointing, compile=parallel_cfg.compile)
        return LocalEngine(model, loss_fn, make_optimizer, device=device)
    if parallel_cfg.engine == "deepspeed":
        return build_zero_engine(model.to(device), plan, dims, parallel_cfg, loss_fn=loss_fn,
                                 make_optimizer=make_optimizer, activation_checkpointing=activation_checkpointing,
                                 batch_size=batch_size, grad_clip=grad_clip, grad_accum_steps=grad_accum_steps)
    return ParallelEngine(model, plan, dims, parallel_cfg, loss_fn=loss_fn, precision=precision,
                          activation_checkpointing=activation_checkpointing, device=device,
                          make_optimizer=make_optimizer)


def build_zero_engine(model: nn.Module, plan: ParallelPlan, dims: ParallelDims, parallel_cfg, *, loss_fn: LossFn,
                      make_optimizer: OptimizerFactory | None, activation_checkpointing: bool, batch_size: int,
                      grad_clip: float, grad_accum_steps: int) -> ZeroEngine:
    """DeepSpeed ZeRO over all ranks: the optimizer is built on the plain model first, as DeepSpeed
    wraps both together."""
    if make_optimizer is None:
        raise ValueError("parallel.engine 'deepspeed' steps the optimizer inside DeepSpeed, so build_engine needs "
                         "make_optimizer (a function of the model parts returning a torch optimizer)")
    if parallel_cfg.compile:
        raise ValueError("parallel.compile=true is not supported with parallel.engine 'deepspeed' (ZeRO-3 "
                         "gathers parameters in module hooks that compiled blocks would trace); use "
                         "parallel.engine 'fsdp' to compile, or parallel.compile=false")
    wrap_units(model, plan, activation_checkpointing=activation_checkpointing, compile=False)
    # precision "bf16" is the trainer's torch.autocast over fp32 weights, gradients and reductions.
    # DeepSpeed's own bf16 mode would store bf16 weights, which autocast's fp32 ops (layer norm on
    # CPU) refuse, and would need bf16 inputs from the task.
    return build_deepspeed_engine(model, make_optimizer([model]), dims, loss_fn=loss_fn, zero_stage=parallel_cfg.zero_stage,
                                  grad_clip=grad_clip, bf16=False, micro_batch_size=batch_size,
                                  grad_accum_steps=grad_accum_steps)
