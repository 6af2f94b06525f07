"""How the ORBIT ViT family is parallelized: its tensor-, sequence- and pipeline-parallel plans.

Registered with the model families (`orbit/models/registry.py`) as `ParallelPlan`s; the engine in
`orbit/parallel/` applies them without importing any model (torchtitan keeps its `parallelize.py`
beside each model the same way). This is the only kind of module under `orbit/models/` that may import
`orbit.parallel`, and only its model-agnostic tools.

- Tensor parallel (Megatron-style, DTensor): each tp rank holds whole attention heads (q/k/v are
  separate projections, so column sharding never mixes them) and a slice of every MLP; the
  variable aggregation is sharded by heads. One all-reduce per attention, one per MLP, one in the
  aggregation in forward (and as many in backward); the rest is replicated.
- Sequence parallel: Ulysses over the spatial tokens (`orbit/parallel/sequence.py`), hooked on every
  `Attention`, the `embed` output and the `forward_head` input.
- Pipeline: contiguous stages [front end] + blocks + [norm and head] (`OrbitStage`).
The downscaling and ELM models reuse the ViT blocks: tensor parallel, no sequence or pipeline split.
"""
from __future__ import annotations

from types import MethodType

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from orbit.models.config import OrbitConfig
from orbit.models.layers.aggregation import VariableAggregation
from orbit.models.layers.attention import Attention
from orbit.models.layers.block import Block
from orbit.models.orbit_vit import OrbitViT
from orbit.parallel.mesh import ParallelDims
from orbit.parallel.pipeline import stage_block_ranges
from orbit.parallel.plans import ParallelPlan
from orbit.parallel.sequence import apply_sequence_parallel as apply_ulysses
from orbit.parallel.tensor import distribute_parameter, on_local_tensors, replicate_the_rest


# ----------------------------------------------------------------------------- tensor parallel

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
        replicate_the_rest(owner, tp_mesh)
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
            distribute_parameter(module, name, device_mesh, Shard(0), self.src_data_rank)
        parallelize_module(module.proj, device_mesh, RowwiseParallel())
        for method in ("forward", "forward_fused"):
            wrapped = on_local_tensors(getattr(type(module), method), list(self.head_sharded), device_mesh)
            setattr(module, method, MethodType(wrapped, module))
        return module



# ----------------------------------------------------------------------------- sequence parallel

def apply_sequence_parallel(module: nn.Module, sp_mesh: DeviceMesh) -> nn.Module:
    """Ulysses over the tokens of a whole `OrbitViT` or a stage of one (after tensor parallel)."""
    config = getattr(module, "config", None)  # a pipeline stage has it too
    return apply_ulysses(module, sp_mesh, [m for m in module.modules() if isinstance(m, Attention)],
                         num_tokens=config.num_tokens if config is not None else None)


# ----------------------------------------------------------------------------- pipeline parallel

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


def split_model(model: OrbitViT, pp_mesh: DeviceMesh, *, stages_per_rank: int = 1) -> list[OrbitStage]:
    """This rank's stages of `model` cut into `pp_mesh.size() * stages_per_rank` stages, lowest index first."""
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




# ----------------------------------------------------------------------------- layout checks and plans

def layout_problems(config: OrbitConfig, dims: ParallelDims, parallel_cfg, batch_size: int) -> list[str]:
    """What makes this layout impossible for an ORBIT ViT of `config`, one sentence each (empty: valid).

    Needs only the architecture, so `orbit plan` checks layouts without building a model."""
    problems = []
    if config.num_heads % (dims.tp * dims.sp):
        problems.append(f"num_heads={config.num_heads} is not divisible by tp*sp={dims.tp * dims.sp} "
                        f"(tensor parallel splits whole heads, Ulysses splits the local heads across sp)")
    if config.agg_heads % dims.tp:
        problems.append(f"agg_heads={config.agg_heads} is not divisible by tp={dims.tp}")
    if config.num_tokens % dims.sp:
        problems.append(f"{config.num_tokens} spatial tokens are not divisible by sp={dims.sp}")
    stages = dims.pp * parallel_cfg.pp_stages_per_rank
    if dims.pp > 1:
        if config.depth < stages:
            problems.append(f"depth={config.depth} blocks are fewer than the {stages} pipeline stages")
        microbatches = parallel_cfg.pp_microbatches or stages
        if microbatches < stages:
            problems.append(f"pp_microbatches={microbatches} is fewer than the {stages} pipeline stages")
        if batch_size % microbatches:
            problems.append(f"data.batch_size={batch_size} per data rank is not divisible by "
                            f"pp_microbatches={microbatches}")
    return problems


def _block_heads_problems(model: nn.Module, dims: ParallelDims, parallel_cfg, batch_size: int) -> list[str]:
    """Models built around ViT blocks only: tp must divide the head count."""
    heads = model.config.num_heads
    return [] if heads % dims.tp == 0 else [f"num_heads={heads} is not divisible by tp={dims.tp}"]


def _blocks(module: nn.Module) -> nn.ModuleList | nn.ModuleDict:
    return module.blocks


def check_pipeline_inputs(inputs: dict) -> None:
    """`var_ids` selects variables for the whole batch, so microbatches cannot split it: refused."""
    if inputs.get("var_ids") is not None:
        raise ValueError(f"pipeline inputs must be batch-first so microbatches can split them, but var_ids is a "
                         f"tensor of shape {tuple(inputs['var_ids'].shape)}; pass var_ids=None with x holding "
                         "the whole variable vocabulary in order")


ORBIT_VIT_PLAN = ParallelPlan(
    family="orbit_vit", blocks=_blocks, tensor_parallel=apply_tensor_parallel,
    sequence_parallel=apply_sequence_parallel, pipeline_split=split_model, pipeline_inputs=MODEL_INPUTS,
    check_pipeline_inputs=check_pipeline_inputs,
    layout_problems=lambda model, dims, parallel_cfg, batch: layout_problems(model.config, dims, parallel_cfg, batch))


def vit_blocks_plan(family: str) -> ParallelPlan:
    """Task models built on ViT blocks with encoders of their own (downscaling, ELM emulator): their
    tokens do not come from `embed`, so they take tensor and data parallelism only."""
    return ParallelPlan(family=family, blocks=_blocks, tensor_parallel=apply_tensor_parallel,
                        layout_problems=_block_heads_problems)
