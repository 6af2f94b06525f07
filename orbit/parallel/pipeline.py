"""Pipeline parallelism: drive a model family's stages with `torch.distributed.pipelining`.

The family's plan cuts the model (`ParallelPlan.pipeline_split`, e.g. `orbit/models/orbit_vit_parallel.py`);
this module wraps the stages in torch's schedules, runs a step and a forward pass, and knows no model.
Stage placement is looped: with `pp` ranks and `stages_per_rank` stages each, stage `s` lives on
pp rank `s % pp` (rank r holds r, r + pp, ...), which is what torch's single-stage schedules and
`ScheduleInterleaved1F1B` expect.

Loss and gradient scaling. torch's schedules, by default, add up the gradients of the per-microbatch
losses and then divide every `p.grad` by the microbatch count (`scale_grads=True`). That division also
hits gradients accumulated before the step (gradient accumulation), so instead the schedule here runs
with `scale_grads=False` and the loss of microbatch i is `loss_fn(out_i, batch_i) * scale / M`. With
M equal microbatches and a `loss_fn` that is a mean over samples, the sum of these is `scale` times the
full-batch loss, so the gradients equal those of `(scale * loss_fn(model(*inputs), batch)).backward()`
and the gradient-sync rule of the engine contract holds unchanged. (A mean over finite target values
is matched exactly when every microbatch holds as many finite values; otherwise this is the mean of
the microbatch means, the same approximation the data-parallel average makes across ranks.)

The loss sees the task's batch: the schedule is given the row indices 0..B-1 as its "target", which
it splits into microbatches, and the loss of microbatch i takes those rows of the batch
(`select_rows`). Model inputs are split along dim 0, so they must be batch-first; the first stage
takes them by keyword (torch's stages accept only tensors as positional inputs), named by the plan.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# name -> (torch schedule class, whether it runs several stages per rank)
SCHEDULES = {
    "gpipe": (ScheduleGPipe, False),
    "1f1b": (Schedule1F1B, False),
    "interleaved_1f1b": (ScheduleInterleaved1F1B, True),
}

def stage_block_ranges(depth: int, num_stages: int) -> list[range]:
    """Contiguous block index ranges, one per stage, sizes differing by at most one.

    The extra blocks of an uneven split go to the later stages: the first stage also carries the
    per-variable tokenizer and the aggregation over variables, the heaviest part outside the blocks.
    """
    base, extra = divmod(depth, num_stages)
    sizes = [base + (1 if s >= num_stages - extra else 0) for s in range(num_stages)]
    starts = [sum(sizes[:s]) for s in range(num_stages)]
    return [range(start, start + size) for start, size in zip(starts, sizes)]


class _MicrobatchLoss:
    """loss_fn(output_i, rows_i of the batch) * scale / M: summed over the M microbatches, `scale` x the
    batch mean. `batch` is set before each step."""

    def __init__(self, loss_fn: LossFn, microbatches: int):
        self.loss_fn = loss_fn
        self.microbatches = microbatches
        self.batch = None

    def __call__(self, output: torch.Tensor, rows: torch.Tensor, *, scale: float) -> torch.Tensor:
        return self.loss_fn(output, select_rows(self.batch, rows)) * (scale / self.microbatches)


def select_rows(batch: Any, rows: torch.Tensor) -> Any:
    """The rows `rows` of a batch: a tensor (dim 0), a tuple or list of them, an object with
    `select(rows)` (a batch dataclass knows which of its fields are batch-first), or None."""
    if batch is None:
        return None
    if isinstance(batch, torch.Tensor):
        return batch.index_select(0, rows.to(batch.device))
    if isinstance(batch, (tuple, list)):
        return type(batch)(select_rows(item, rows) for item in batch)
    if callable(getattr(batch, "select", None)):
        return batch.select(rows)
    raise TypeError(f"pipeline layouts split the loss's batch into microbatches, so it must be a batch-first "
                    f"tensor, a tuple or list of them, or an object with select(rows); got {type(batch).__name__}")


@dataclass
class Pipeline:
    """A torch schedule with the stage modules it runs on this rank and its microbatch count."""

    schedule: ScheduleGPipe | Schedule1F1B | ScheduleInterleaved1F1B
    stages: list[nn.Module]
    input_names: tuple[str, ...]
    microbatches: int
    device: torch.device
    loss: "_MicrobatchLoss"
    check_inputs: Callable[[dict], None] | None = None

    @property
    def has_first(self) -> bool:
        return any(stage.is_first for stage in self.stages)

    @property
    def has_last(self) -> bool:
        return any(stage.is_last for stage in self.stages)


def _mesh_device(mesh: DeviceMesh) -> torch.device:
    if mesh.device_type == "cpu":
        return torch.device("cpu")
    return torch.device(mesh.device_type, torch.get_device_module(mesh.device_type).current_device())


def build_schedule(stages: list[nn.Module], pp_mesh: DeviceMesh, *, schedule: str, microbatches: int,
                   loss_fn: LossFn, input_names: tuple[str, ...],
                   check_inputs: Callable[[dict], None] | None = None) -> Pipeline:
    """Wrap this rank's `stages` (from the plan's `pipeline_split`, after TP/SP/FSDP) in `PipelineStage`s and a
    schedule; `input_names` name the model's positional inputs, which the first stage takes by keyword."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown pipeline schedule {schedule!r}; valid names: {sorted(SCHEDULES)}")
    schedule_cls, multi_stage = SCHEDULES[schedule]
    if multi_stage and len(stages) < 2:
        raise ValueError(f"schedule {schedule!r} runs several stages per rank, but this rank has {len(stages)}; "
                         "split the model with stages_per_rank >= 2 or use 'gpipe' or '1f1b'")
    if not multi_stage and len(stages) != 1:
        raise ValueError(f"schedule {schedule!r} runs one stage per rank, but this rank has {len(stages)}; "
                         "split the model with stages_per_rank=1 or use 'interleaved_1f1b'")
    num_stages = stages[0].num_stages
    if microbatches < num_stages:
        raise ValueError(f"microbatches={microbatches} is fewer than the {num_stages} pipeline stages; "
                         f"use at least {num_stages} microbatches so every stage has work")
    device = _mesh_device(pp_mesh)
    group = pp_mesh.get_group()
    pipeline_stages = [PipelineStage(stage, stage.index, num_stages, device, group=group) for stage in stages]
    loss = _MicrobatchLoss(loss_fn, microbatches)
    torch_schedule = (schedule_cls(pipeline_stages, microbatches, loss_fn=loss, scale_grads=False) if multi_stage
                      else schedule_cls(pipeline_stages[0], microbatches, loss_fn=loss, scale_grads=False))
    return Pipeline(torch_schedule, list(stages), input_names, microbatches, device, loss, check_inputs)


def _model_kwargs(inputs: tuple, pipeline: Pipeline) -> dict:
    """The model's positional inputs by name (the first stage takes them by keyword), checked."""
    names = pipeline.input_names
    if len(inputs) > len(names):
        raise ValueError(f"inputs must be up to {len(names)} values {names}, got {len(inputs)}")
    kwargs = dict(zip(names, inputs))
    if pipeline.check_inputs is not None:
        pipeline.check_inputs(kwargs)
    return kwargs


def _local_batch_size(inputs: tuple, microbatches: int) -> int:
    sizes = {t.shape[0] for t in inputs if isinstance(t, torch.Tensor)}
    if len(sizes) != 1:
        raise ValueError(f"pipeline inputs must be batch-first tensors (or None) of one batch size so microbatches "
                         f"can split them, got dim-0 sizes {sorted(sizes)} (e.g. an input that is not batch-first)")
    batch = sizes.pop()
    if batch % microbatches:
        raise ValueError(f"the local batch of {batch} samples does not split into microbatches={microbatches}; "
                         f"use a batch that is a multiple of {microbatches}")
    return batch


def pipeline_step(pipeline: Pipeline, pp_mesh: DeviceMesh, inputs: tuple, batch: Any, *,
                  scale: float = 1.0) -> torch.Tensor:
    """Forward and backward of the local batch through the pipeline; returns the loss on every pp rank.

    inputs: batch-first tensors (or None, replicated to every microbatch) for the model's `forward`;
    batch: what the loss takes besides the output (see `select_rows`). The returned scalar (detached,
    fp32) is the mean of `loss_fn` over the microbatches; gradients of `scale * loss` are added to
    `.grad` of this rank's stage parameters.
    """
    model_kwargs = _model_kwargs(inputs, pipeline)  # every rank validates, so none waits on a failed peer
    rows = torch.arange(_local_batch_size(inputs, pipeline.microbatches), device=pipeline.device)
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    losses: list[torch.Tensor] = []
    pipeline.loss.batch = batch
    try:
        pipeline.schedule.step(**(model_kwargs if pipeline.has_first else {}),
                               target=rows if pipeline.has_last else None,
                               losses=losses, return_outputs=False, loss_kwargs={"scale": scale})
    finally:
        pipeline.loss.batch = None
    if pipeline.has_last:
        loss = (torch.stack(losses).sum() / scale).detach().float()
    else:
        loss = torch.zeros((), dtype=torch.float32, device=pipeline.device)
    dist.broadcast(loss, group=pp_mesh.get_group(), group_src=pp_mesh.size() - 1)
    return loss


@torch.no_grad()
def pipeline_forward(pipeline: Pipeline, pp_mesh: DeviceMesh, inputs: tuple) -> torch.Tensor:
    """The model's output for the whole local batch, present on every pp rank (for evaluation).

    Runs the stages in order with plain send/recv and no microbatching: it keeps no activations,
    accepts any batch size (the schedules fix their shapes at their first step) and never touches
    the training schedule's state.
    """
    stages = pipeline.stages
    model_kwargs = _model_kwargs(inputs, pipeline)
    group, pp, rank = pp_mesh.get_group(), pp_mesh.size(), pp_mesh.get_local_rank()
    device = _mesh_device(pp_mesh)
    num_stages = stages[0].num_stages
    local = {stage.index: stage for stage in stages}
    activation = None
    for index in sorted(local):
        if index > 0 and (index - 1) % pp != rank:
            activation = _recv_tensor(group, (index - 1) % pp, device)
        activation = local[index](**model_kwargs) if index == 0 else local[index](activation)
        if index + 1 < num_stages and (index + 1) % pp != rank:
            _send_tensor(activation, group, (index + 1) % pp, device)
    return _broadcast_tensor(activation, group, pp - 1, rank == pp - 1, device)


def _send_tensor(tensor: torch.Tensor, group, group_dst: int, device: torch.device) -> None:
    dist.send_object_list([(tensor.shape, tensor.dtype)], group=group, group_dst=group_dst, device=device)
    dist.send(tensor, group=group, group_dst=group_dst)


def _recv_tensor(group, group_src: int, device: torch.device) -> torch.Tensor:
    meta = [None]
    dist.recv_object_list(meta, group=group, group_src=group_src, device=device)
    shape, dtype = meta[0]
    tensor = torch.empty(shape, dtype=dtype, device=device)
    dist.recv(tensor, group=group, group_src=group_src)
    return tensor


def _broadcast_tensor(tensor: torch.Tensor | None, group, group_src: int, is_src: bool,
                      device: torch.device) -> torch.Tensor:
    meta = [(tensor.shape, tensor.dtype) if is_src else None]
    dist.broadcast_object_list(meta, group=group, group_src=group_src, device=device)
    if not is_src:
        tensor = torch.empty(meta[0][0], dtype=meta[0][1], device=device)
    dist.broadcast(tensor, group=group, group_src=group_src)
    return tensor
