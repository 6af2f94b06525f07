"""Pipeline parallelism: cut an `OrbitViT` into stages and drive them with `torch.distributed.pipelining`.

Stage placement is looped: with `pp` ranks and `stages_per_rank` stages each, stage `s` lives on
pp rank `s % pp` (rank r holds r, r + pp, ...), which is what torch's single-stage schedules and
`ScheduleInterleaved1F1B` expect.

Loss and gradient scaling. torch's schedules, by default, add up the gradients of the per-microbatch
losses and then divide every `p.grad` by the microbatch count (`scale_grads=True`). That division also
hits gradients accumulated before the step (gradient accumulation), so instead the schedule here runs
with `scale_grads=False` and the loss of microbatch i is `loss_fn(out_i, target_i) * scale / M`. With
M equal microbatches and a `loss_fn` that is a mean over samples, the sum of these is `scale` times the
full-batch loss, so the gradients equal those of `(scale * loss_fn(model(*inputs), target)).backward()`
and the gradient-sync rule of the engine contract holds unchanged. (A mean over finite target values
is matched exactly when every microbatch holds as many finite values; otherwise this is the mean of
the microbatch means, the same approximation the data-parallel average makes across ranks.)

Inputs are split into microbatches along dim 0, so they must be batch-first: `var_ids` must be None
(x holds the whole vocabulary in order), and the first stage takes the model's inputs by keyword
because torch's stages accept only tensors as positional inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B

from orbit.models.orbit_vit import OrbitViT

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# name -> (torch schedule class, whether it runs several stages per rank)
SCHEDULES = {
    "gpipe": (ScheduleGPipe, False),
    "1f1b": (Schedule1F1B, False),
    "interleaved_1f1b": (ScheduleInterleaved1F1B, True),
}

MODEL_INPUTS = ("x", "var_ids", "lead_hours", "var_mask")  # `OrbitViT.forward`'s positional inputs, in order
_EMBED_MODULES = ("patch_embed", "var_embed", "aggregation", "lead_embed")
_HEAD_MODULES = ("norm", "head")


class OrbitStage(nn.Module):
    """One contiguous piece of an `OrbitViT`: [embedding front end] + a run of blocks + [final norm and head].

    It holds the model's own submodules under their original names, with `blocks` an `nn.ModuleDict`
    keyed by each block's index in the full model, so parameter names (FQNs) are the full model's
    (`blocks.3.attn.q_proj.weight`): distributed checkpoints load across any pipeline layout.
    The front end and head run the model's own code (`OrbitViT.embed` / `forward_head`, which only
    use attributes this module also has), so a stage computes exactly what that part of the model does.
    """

    embed = OrbitViT.embed
    _check_inputs = OrbitViT._check_inputs
    forward_head = OrbitViT.forward_head

    def __init__(self, model: OrbitViT, index: int, num_stages: int, block_ids: range):
        super().__init__()
        self.config = model.config
        self.index = index
        self.num_stages = num_stages
        if self.is_first:
            for name in _EMBED_MODULES:
                setattr(self, name, getattr(model, name))
            self.register_buffer("pos_embed", model.pos_embed, persistent=False)
        self.blocks = nn.ModuleDict({str(i): model.blocks[i] for i in block_ids})
        if self.is_last:
            for name in _HEAD_MODULES:
                setattr(self, name, getattr(model, name))

    @property
    def is_first(self) -> bool:
        return self.index == 0

    @property
    def is_last(self) -> bool:
        return self.index == self.num_stages - 1

    def forward(self, tokens: torch.Tensor | None = None, *, x: torch.Tensor | None = None,
                var_ids: torch.Tensor | None = None, lead_hours: torch.Tensor | None = None,
                var_mask: torch.Tensor | None = None) -> torch.Tensor:
        """First stage: `OrbitViT.forward`'s inputs by keyword (`var_ids`, `var_mask` may be None);
        the others: tokens (B, L, D). Returns tokens (B, L, D), or fields (B, V_out, H, W) from the
        last stage, contiguous because gloo refuses to send strided views.
        """
        if self.is_first:  # var_ids None: x holds the whole vocabulary in order
            tokens = self.embed(x, var_ids, lead_hours, var_mask)
        for block in self.blocks.values():
            tokens = block(tokens)
        return (self.forward_head(tokens) if self.is_last else tokens).contiguous()

    def extra_repr(self) -> str:
        return f"stage {self.index} of {self.num_stages}"


def stage_block_ranges(depth: int, num_stages: int) -> list[range]:
    """Contiguous block index ranges, one per stage, sizes differing by at most one.

    The extra blocks of an uneven split go to the later stages: the first stage also carries the
    per-variable tokenizer and the aggregation over variables, the heaviest part outside the blocks.
    """
    base, extra = divmod(depth, num_stages)
    sizes = [base + (1 if s >= num_stages - extra else 0) for s in range(num_stages)]
    starts = [sum(sizes[:s]) for s in range(num_stages)]
    return [range(start, start + size) for start, size in zip(starts, sizes)]


def split_model(model: OrbitViT, pp_mesh: DeviceMesh, *, stages_per_rank: int = 1) -> list[OrbitStage]:
    """This rank's stages of `model` cut into `pp_mesh.size() * stages_per_rank` stages, lowest index first."""
    if not isinstance(model, OrbitViT):
        raise TypeError(f"split_model cuts an OrbitViT, got {type(model).__name__}")
    if stages_per_rank < 1:
        raise ValueError(f"stages_per_rank must be >= 1, got {stages_per_rank}")
    pp = pp_mesh.size()
    num_stages = pp * stages_per_rank
    depth = len(model.blocks)
    if depth < num_stages:
        raise ValueError(
            f"the model has {depth} blocks, fewer than the {num_stages} pipeline stages "
            f"(pp={pp} x stages_per_rank={stages_per_rank}); every stage needs at least one block, "
            f"so use at most {depth} stages"
        )
    ranges = stage_block_ranges(depth, num_stages)
    return [OrbitStage(model, s, num_stages, ranges[s])
            for s in range(pp_mesh.get_local_rank(), num_stages, pp)]


class _MicrobatchLoss:
    """loss_fn(output_i, target_i) * scale / M: summed over the M microbatches, `scale` x the batch mean."""

    def __init__(self, loss_fn: LossFn, microbatches: int):
        self.loss_fn = loss_fn
        self.microbatches = microbatches

    def __call__(self, output: torch.Tensor, target: torch.Tensor, *, scale: float) -> torch.Tensor:
        return self.loss_fn(output, target) * (scale / self.microbatches)


@dataclass
class Pipeline:
    """A torch schedule with the stage modules it runs on this rank and its microbatch count."""

    schedule: ScheduleGPipe | Schedule1F1B | ScheduleInterleaved1F1B
    stages: list[OrbitStage]
    microbatches: int
    device: torch.device

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


def build_schedule(stages: list[OrbitStage], pp_mesh: DeviceMesh, *, schedule: str, microbatches: int,
                   loss_fn: LossFn) -> Pipeline:
    """Wrap this rank's `stages` (from `split_model`, after TP/SP/FSDP) in `PipelineStage`s and a schedule."""
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
    return Pipeline(torch_schedule, list(stages), microbatches, device)


def _model_kwargs(inputs: tuple) -> dict:
    """`OrbitViT.forward`'s positional inputs by name; refuses the one input that is not batch-first."""
    if len(inputs) > len(MODEL_INPUTS):
        raise ValueError(f"inputs must be up to {len(MODEL_INPUTS)} values {MODEL_INPUTS}, got {len(inputs)}")
    kwargs = dict(zip(MODEL_INPUTS, inputs))
    if kwargs.get("var_ids") is not None:
        raise ValueError(f"pipeline inputs must be batch-first so microbatches can split them, but var_ids is a "
                         f"tensor of shape {tuple(kwargs['var_ids'].shape)}; pass var_ids=None with x holding "
                         "the whole variable vocabulary in order")
    return kwargs


def _check_batch(inputs: tuple, target: torch.Tensor, microbatches: int) -> None:
    sizes = {t.shape[0] for t in (*inputs, target) if isinstance(t, torch.Tensor)}
    if len(sizes) != 1:
        raise ValueError(f"inputs and target must share the batch size (dim 0), got sizes {sorted(sizes)}")
    batch = sizes.pop()
    if batch % microbatches:
        raise ValueError(f"the local batch of {batch} samples does not split into microbatches={microbatches}; "
                         f"use a batch that is a multiple of {microbatches}")


def pipeline_step(pipeline: Pipeline, pp_mesh: DeviceMesh, inputs: tuple, target: torch.Tensor, *,
                  scale: float = 1.0) -> torch.Tensor:
    """Forward and backward of the local batch through the pipeline; returns the loss on every pp rank.

    inputs: batch-first tensors (or None, replicated to every microbatch) for `OrbitViT.forward`;
    target: (B, ...). The returned scalar (detached, fp32) is the mean of `loss_fn` over the
    microbatches; gradients of `scale * loss` are added to `.grad` of this rank's stage parameters.
    """
    model_kwargs = _model_kwargs(inputs)  # every rank validates, so none is left waiting on a failed peer
    _check_batch(inputs, target, pipeline.microbatches)
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    losses: list[torch.Tensor] = []
    pipeline.schedule.step(**(model_kwargs if pipeline.has_first else {}),
                           target=target if pipeline.has_last else None,
                           losses=losses, return_outputs=False, loss_kwargs={"scale": scale})
    if pipeline.has_last:
        loss = (torch.stack(losses).sum() / scale).detach().float()
    else:
        loss = torch.zeros((), dtype=torch.float32, device=pipeline.device)
    dist.broadcast(loss, group=pp_mesh.get_group(), group_src=pp_mesh.size() - 1)
    return loss


@torch.no_grad()
def pipeline_forward(stages: list[OrbitStage], pp_mesh: DeviceMesh, inputs: tuple) -> torch.Tensor:
    """Prediction (B, V_out, H, W) for the whole local batch, present on every pp rank (for evaluation).

    Runs the stages in order with plain send/recv and no microbatching: it keeps no activations,
    accepts any batch size (the schedules fix their shapes at their first step) and never touches
    the training schedule's state.
    """
    model_kwargs = _model_kwargs(inputs)
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
