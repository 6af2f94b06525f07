"""Capacity planning: will a run's layout fit a cluster, what does it cost, and which layouts would?

`orbit plan` answers before a job waits in a queue for thousands of GPUs, from the architecture
alone: parameters are counted on the meta device, and nothing else is allocated (no tensor, no
process group).

Memory per rank (the fullest one: a pipeline's first stage keeps the front end and the most
microbatches in flight). FSDP2 shards every unit (each block; each stage root holding the front end
or the head) over dp_shard*sp ranks, padding dim 0 to a multiple of the shard count as FSDP2 does
(which matters when a tp-local weight has fewer rows than there are shards); tp divides the sharded
weights of `comm_model` (whole heads, MLP columns); pp gives each rank its stages' blocks. Bytes per
element of a rank's shard: fp32 parameters (the master copy) 4, fp32 gradients 4, AdamW moments
8. Working copies: with FSDP, the current and the prefetched unit gathered in the compute dtype,
plus one unit's unsharded gradient (compute dtype and its fp32 reduce copy); without FSDP under
bf16, autocast's cache of bf16 weights (2 bytes per local parameter).

Activations kept for backward, per block and rank, for a micro-batch of b samples (Korthikanti et al.
2022, "Reducing activation recomputation in large transformer models", section 4, redone for this
block: pre-LN, separate q/k/v projections with QK-norm, SDPA, GELU MLP, no dropout). L tokens,
s = sp (Ulysses: each rank keeps a band of L/s tokens), D width, t = tp, a heads, r = mlp_ratio,
q = 1 with QK-norm, e = 2 bytes under bf16 and 4 under fp32:

    block = e b (L/s) D [4 + (5 + 2q + 2r) / t] + attention scores
      4 replicated over tp (the TP plan keeps norms replicated): LN1 input, LN1 output (the
        q/k/v input), LN2 input, LN2 output (the fc1 input);
      5 + 2q sharded by heads: q, k before QK-norm (2q), q, k, v into attention (3), the attention
        output and its contiguous copy into proj (2);
      2r: fc1 output (the GELU input) and GELU output (the fc2 input);
      scores: flash / memory-efficient attention keeps the fp32 log-sum-exp, 4 b a L / (t s) bytes;
        the math path keeps the softmax, e b a L^2 / (t s).
    For ORBIT (q = 1, r = 4) that is e b L D / s (4 + 15 / t), Korthikanti's 34 s b h without TP
    becomes 38 here (no dropout masks, but QK-norm and the copy before proj).
    Activation checkpointing keeps only each block's input, e b (L/s) D, and recomputes one block at
    a time in backward (one full block on top).
    Front end, first stage only, full L on every sp rank, heads sharded by tp (V variables, k = p^2
    patch pixels, H_a aggregation heads):
      fused:   e b L [V k + (H_a/t) V (k + 1) + D/t]   (patches; softmax weights over variables; the
               weighted patches (B, L, H_a, V k); the heads into the output projection)
      unfused: e b L [V k + V D + 2 V D/t + (H_a/t) V + D/t]   (per-variable tokens (B, V, L, D), keys,
               values, weights, heads)
    Head, last stage, all L tokens: e b L 2D (norm and linear inputs) + 8 b L V_out k (fp32 output and
    the loss's difference).
    In flight per rank: 1 micro-batch without pipeline; GPipe M; 1F1B min(M, pp - rank); interleaved
    1F1B the 1F1B count times 1 + (pp - 1)/(pp v) (Narayanan et al. 2021). Transient buffers
    (gradients of activations, collectives, allocator fragmentation) are what the headroom is for.

Communication per rank and step comes from `comm_model.expected_sent_bytes`; where it leaves FSDP
under a pipeline unmodelled, the plan bounds it by re-gathering each stage for every microbatch in
forward and backward (`apply_fsdp` reshards after forward) and reduce-scattering once.

Cost used to rank layouts: estimated GPU-seconds per training sample,
    step = compute (1 + bubble) + sum over axes of bytes / link bandwidth (no overlap assumed)
    cost = step * world_size / global batch,
with compute = training FLOPs of the local batch (3x forward, plus one more forward of the blocks under
activation checkpointing) / (tp sp pp) / peak FLOP/s, bubble = (stages - 1)/M for GPipe/1F1B and
(pp - 1)/(v M) interleaved, and each axis on the intra-node bandwidth when every group of it stays
inside a node, else on the inter-node bandwidth per GPU.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
from dataclasses import dataclass, field

import torch

from orbit.models.config import OrbitConfig
from orbit.models.flops import forward_flops
from orbit.models.orbit_vit import OrbitViT
from orbit.models.registry import get_config

from orbit.perf.comm_model import FLATTENED, TP_SHARDED_AGGREGATION, TP_SHARDED_BLOCK, expected_sent_bytes, fsdp_label
from orbit.parallel.mesh import AXES, ParallelDims, parallel_dims_from
from orbit.models.orbit_vit_parallel import layout_problems
from orbit.parallel.pipeline import stage_block_ranges
from orbit.parallel.sharding import check_deepspeed_layout

GIB = 1024**3
FP32 = 4
# Row-parallel weights are split along dim 1 under tp; every other tp-sharded parameter along dim 0.
ROWWISE = ("attn.proj.weight", "mlp.fc2.weight", "aggregation.proj.weight")
_MEMORY_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
                 "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_memory(text: str) -> int:
    """"64GiB" -> 68719476736 bytes. Binary units KiB..TiB, decimal kB..TB, or plain bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _MEMORY_UNITS or float(match.group(1)) <= 0:
        raise ValueError(f"GPU memory {text!r} is not a positive size; write e.g. 64GiB, 80GB, 512MiB "
                         f"or a number of bytes (units: KiB MiB GiB TiB, kB MB GB TB)")
    return int(float(match.group(1)) * _MEMORY_UNITS[unit])


@dataclass(frozen=True)
class Cluster:
    """The machine planned for. Defaults describe a Frontier node: 8 MI250X GCDs of 64 GiB, about
    50 GB/s Infinity Fabric between GCDs, 4 x 25 GB/s Slingshot NICs shared by 8 GCDs (12.5 GB/s
    each), 191.5 TFLOP/s dense bf16 peak per GCD."""

    nodes: int
    gpus_per_node: int = 8
    gpu_memory_bytes: int = 64 * GIB
    headroom: float = 0.15
    intra_node_bytes_per_s: float = 50e9
    inter_node_bytes_per_s: float = 12.5e9
    peak_flops: float = 191.5e12

    def __post_init__(self) -> None:
        for name in ("nodes", "gpus_per_node", "gpu_memory_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer")
        if not 0.0 <= self.headroom < 1.0:
            raise ValueError(f"headroom={self.headroom} must be a fraction in [0, 1), e.g. 0.15")

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def usable_bytes(self) -> float:
        return self.gpu_memory_bytes * (1.0 - self.headroom)


@dataclass(frozen=True)
class Layout:
    """Resolved degrees plus the settings that change memory and traffic; the `pp_*` fields are
    named as in the `parallel:` config section, so `layout_problems` reads a Layout like one."""

    pp: int
    dp_replicate: int
    dp_shard: int
    sp: int
    tp: int
    pp_microbatches: int = 1
    pp_stages_per_rank: int = 1
    pp_schedule: str = "1f1b"
    activation_checkpointing: bool = False
    engine: str = "fsdp"
    zero_stage: int = 2

    def dims(self, world_size: int) -> ParallelDims:
        return ParallelDims(world_size, **{axis: getattr(self, axis) for axis in AXES})

    def overrides(self) -> str:
        """Ready-to-paste `orbit pretrain` overrides."""
        items = [f"parallel.{axis}={getattr(self, axis)}" for axis in AXES]
        if self.pp > 1:
            items.append(f"parallel.pp_microbatches={self.pp_microbatches}")
        items.append(f"train.activation_checkpointing={str(self.activation_checkpointing).lower()}")
        return " ".join(items)


@dataclass(frozen=True)
class Memory:
    """Bytes held by the fullest rank (`pp_rank`)."""

    params: float
    grads: float
    optimizer: float
    working: float
    activations: float
    pp_rank: int = 0

    @property
    def total(self) -> float:
        return self.params + self.grads + self.optimizer + self.working + self.activations


@dataclass(frozen=True)
class AxisTraffic:
    """One mesh axis (or flattened group) that carries traffic: its size, placement and bytes."""

    label: str
    size: int
    nodes_per_group: tuple[int, int]  # (fewest, most) nodes one group of it spans
    bytes_per_step: float | None  # sent by one rank per step; None: not modelled

    @property
    def intra_node(self) -> bool:
        return self.nodes_per_group[1] == 1


@dataclass
class Plan:
    """Everything `orbit plan` prints; `memory`, `traffic` and `cost` are None for an invalid layout."""

    model: OrbitConfig
    cluster: Cluster
    layout: Layout | None  # None when the configured degrees cannot cover the world
    batch_size: int
    precision: str
    flash_attention: bool = True
    problems: list[str] = field(default_factory=list)
    memory: Memory | None = None
    memory_other_ac: Memory | None = None  # the same layout with activation checkpointing toggled
    traffic: list[AxisTraffic] = field(default_factory=list)
    step_seconds: float | None = None
    cost: float | None = None  # GPU-seconds per training sample
    suggestions: list["Plan"] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.problems

    @property
    def fits(self) -> bool:
        return self.valid and self.memory is not None and self.memory.total <= self.cluster.usable_bytes


# --------------------------------------------------------------------------- parameters


@functools.lru_cache(maxsize=16)
def _param_shapes(config: OrbitConfig) -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    """(name, shape) of one block's, the front end's and the head's parameters (all blocks are alike)."""
    with torch.device("meta"):
        model = OrbitViT(config)
    named = list(model.named_parameters())
    return {"block": [(n, tuple(p.shape)) for n, p in model.blocks[0].named_parameters()],
            "front": [(n, tuple(p.shape)) for n, p in named if not n.startswith(("blocks.", "norm.", "head."))],
            "head": [(n, tuple(p.shape)) for n, p in named if n.startswith(("norm.", "head."))]}


def _tp_local(name: str, shape: tuple[int, ...], tp: int) -> tuple[int, ...]:
    if not name.startswith(TP_SHARDED_BLOCK + TP_SHARDED_AGGREGATION):
        return shape
    dim = 1 if name in ROWWISE else 0
    return tuple(size // tp if i == dim else size for i, size in enumerate(shape))


@functools.lru_cache(maxsize=256)
def unit_elements(config: OrbitConfig, tp: int, shards: int) -> dict[str, tuple[int, int]]:
    """Per FSDP unit ("block", "front", "head"): (elements per tp rank unsharded, elements one rank
    stores after FSDP2 shards dim 0 over `shards` ranks with padding)."""
    out = {}
    for unit, shapes in _param_shapes(config).items():
        local = [_tp_local(name, shape, tp) for name, shape in shapes]
        full = sum(math.prod(s) for s in local)
        stored = sum(math.ceil(s[0] / shards) * math.prod(s[1:]) for s in local)
        out[unit] = (full, stored)
    return out


def num_params(config: OrbitConfig) -> int:
    units = unit_elements(config, 1, 1)
    return units["front"][0] + config.depth * units["block"][0] + units["head"][0]


# --------------------------------------------------------------------------- activations


def block_activation_bytes(config: OrbitConfig, micro_batch: float, *, tp: int, sp: int, elem_bytes: int,
                           flash_attention: bool = True) -> float:
    """Bytes one block keeps for backward on one rank (formula in the module docstring)."""
    b, L, D, a = micro_batch, config.num_tokens, config.embed_dim, config.num_heads
    sharded = 5 + 2 * int(config.qk_norm) + 2 * config.mlp_ratio
    stored = elem_bytes * b * (L / sp) * D * (4 + sharded / tp)
    scores = FP32 * b * a * L / (tp * sp) if flash_attention else elem_bytes * b * a * L * L / (tp * sp)
    return stored + scores


def front_activation_bytes(config: OrbitConfig, micro_batch: float, *, tp: int, elem_bytes: int) -> float:
    V, k, L, D = len(config.variables), config.patch_size**2, config.num_tokens, config.embed_dim
    heads = config.agg_heads / tp
    if config.fused_frontend:
        per_token = V * k + heads * V * (k + 1) + D / tp
    else:
        per_token = V * k + V * D + 2 * V * D / tp + heads * V + D / tp
    return elem_bytes * micro_batch * L * per_token


def head_activation_bytes(config: OrbitConfig, micro_batch: float, *, elem_bytes: int) -> float:
    L, D = config.num_tokens, config.embed_dim
    outputs = len(config.out_variables) * config.patch_size**2
    return elem_bytes * micro_batch * L * 2 * D + 2 * FP32 * micro_batch * L * outputs


def _in_flight(layout: Layout, pp_rank: int) -> float:
    """Microbatches whose activations a pp rank holds at once (module docstring)."""
    if layout.pp == 1:
        return 1.0
    if layout.pp_schedule == "gpipe":
        return float(layout.pp_microbatches)
    count = float(min(layout.pp_microbatches, layout.pp - pp_rank))
    if layout.pp_schedule == "interleaved_1f1b":
        count *= 1 + (layout.pp - 1) / (layout.pp * layout.pp_stages_per_rank)
    return count


# --------------------------------------------------------------------------- memory


def memory_per_rank(config: OrbitConfig, layout: Layout, *, batch_size: int, precision: str,
                    flash_attention: bool = True) -> Memory:
    """Memory of the fullest pp rank of `layout` (module docstring for the terms)."""
    bf16 = precision == "bf16"
    e = 2 if bf16 else 4
    micro = batch_size / layout.pp_microbatches
    stages = layout.pp * layout.pp_stages_per_rank
    ranges = stage_block_ranges(config.depth, stages)
    fsdp = layout.engine == "fsdp" and layout.dp_replicate * layout.dp_shard * layout.sp > 1
    shards = layout.dp_shard * layout.sp if layout.engine == "fsdp" else 1
    units = unit_elements(config, layout.tp, shards)
    block_act = block_activation_bytes(config, micro, tp=layout.tp, sp=layout.sp, elem_bytes=e,
                                       flash_attention=flash_attention)
    kept_per_block = e * micro * (config.num_tokens / layout.sp) * config.embed_dim \
        if layout.activation_checkpointing else block_act
    worst = None
    for rank in range(layout.pp):
        my_stages = range(rank, stages, layout.pp)
        blocks = sum(len(ranges[s]) for s in my_stages)
        names = ["block"] * blocks + ["front"] * (0 in my_stages) + ["head"] * (stages - 1 in my_stages)
        full = sum(units[n][0] for n in names)
        stored = sum(units[n][1] for n in names) if fsdp else full
        activations = kept_per_block * blocks
        activations += front_activation_bytes(config, micro, tp=layout.tp, elem_bytes=e) * (0 in my_stages)
        activations += head_activation_bytes(config, micro, elem_bytes=e) * (stages - 1 in my_stages)
        activations = activations * _in_flight(layout, rank) + block_act * layout.activation_checkpointing
        if layout.engine == "deepspeed":
            memory = _zero_memory(full, layout, world=layout.dp_shard, bf16=bf16, activations=activations)
        else:
            largest = max(units[n][0] for n in set(names))
            working = largest * (2 * e + (e + FP32 if bf16 else FP32)) if fsdp else 2 * full * bf16
            memory = Memory(FP32 * stored, FP32 * stored, 2 * FP32 * stored, working, activations, rank)
        if worst is None or memory.total > worst.total:
            worst = memory
    return worst


def _zero_memory(params: int, layout: Layout, *, world: int, bf16: bool, activations: float) -> Memory:
    """DeepSpeed ZeRO over all ranks (fp32 weights under autocast): stage 1 shards the optimizer
    state, 2 also the gradients, 3 also the parameters."""
    stage = layout.zero_stage
    shard = lambda on: params / world if on else params  # noqa: E731
    return Memory(FP32 * shard(stage >= 3), FP32 * shard(stage >= 2), 2 * FP32 * shard(stage >= 1),
                  2 * params * bf16 if stage < 3 else 0.0, activations)


# --------------------------------------------------------------------------- placement and traffic


def _group_shape(label: str, dims: ParallelDims) -> tuple[int, int]:
    """(stride between a group's consecutive ranks, group size) of a mesh axis or flattened mesh."""
    axes = FLATTENED.get(label, ("sp",) if label == "sp_fsdp" else (label,))
    inner = AXES[AXES.index(axes[-1]) + 1:]
    return math.prod(getattr(dims, a) for a in inner), math.prod(getattr(dims, a) for a in axes)


@functools.lru_cache(maxsize=1024)
def nodes_per_group(stride: int, size: int, gpus_per_node: int) -> tuple[int, int]:
    """(fewest, most) nodes spanned by one group of `size` ranks `stride` apart, when a node holds
    `gpus_per_node` consecutive ranks. The pattern repeats every lcm(gpus_per_node, stride*size) ranks."""
    period = math.lcm(gpus_per_node, stride * size)
    spans = {len({(base + i * stride) // gpus_per_node for i in range(size)})
             for base in range(period) if (base // stride) % size == 0}
    return min(spans), max(spans)


def _fsdp_under_pipeline(config: OrbitConfig, dims: ParallelDims, layout: Layout, param_bytes: int,
                         apart_from_sp: bool = False) -> dict[str, float]:
    """Bound of what comm_model leaves unmodelled (module docstring), by axis label."""
    units = unit_elements(config, dims.tp, 1)
    per_rank = (units["front"][0] + units["head"][0] + config.depth * units["block"][0]) / dims.pp
    n, r = dims.dp_shard * dims.sp, dims.dp_replicate
    return {fsdp_label(dims, apart_from_sp=apart_from_sp): (n - 1) / n * (2 * layout.pp_microbatches * param_bytes + FP32) * per_rank,
            "dp_replicate": 2 * (r - 1) / r * FP32 * per_rank / n}


def traffic_per_axis(config: OrbitConfig, layout: Layout, cluster: Cluster, *, batch_size: int,
                     precision: str, fsdp_apart_from_sp: bool = False) -> list[AxisTraffic]:
    """Bytes per step and placement of every axis that communicates (labels as `comm_stats` counts
    them; `fsdp_apart_from_sp`: FSDP over the sp ranks alone as "sp_fsdp", see `fsdp_label`)."""
    dims = layout.dims(cluster.world_size)
    if layout.engine == "deepspeed":
        sent: dict[str, float | None] = {"dp_shard": None} if dims.dp_shard > 1 else {}
    else:
        fsdp = dims.dp_replicate * dims.dp_shard * dims.sp > 1
        param_bytes = 2 if precision == "bf16" and fsdp else FP32
        sent = expected_sent_bytes(config, dims, local_batch=batch_size, microbatches=layout.pp_microbatches,
                                   stages_per_rank=layout.pp_stages_per_rank, param_bytes=param_bytes,
                                   fsdp_apart_from_sp=fsdp_apart_from_sp)
        bound = _fsdp_under_pipeline(config, dims, layout, param_bytes, fsdp_apart_from_sp)
        sent = {label: bound[label] if value is None else value for label, value in sent.items()}
    out = []
    for label, value in sent.items():
        stride, size = _group_shape(label, dims)
        out.append(AxisTraffic(label, size, nodes_per_group(stride, size, cluster.gpus_per_node), value))
    return out


def step_seconds(config: OrbitConfig, layout: Layout, cluster: Cluster, traffic: list[AxisTraffic], *,
                 batch_size: int) -> float | None:
    """Estimated step time of one rank (module docstring); None when some traffic is not modelled."""
    if any(t.bytes_per_step is None for t in traffic):
        return None
    flops = forward_flops(config, batch_size=batch_size)
    train = 3 * flops["total"] + (flops["attention"] + flops["mlp"]) * layout.activation_checkpointing
    compute = train / (layout.tp * layout.sp * layout.pp) / cluster.peak_flops
    if layout.pp == 1:
        bubble = 0.0
    elif layout.pp_schedule == "interleaved_1f1b":
        bubble = (layout.pp - 1) / (layout.pp_stages_per_rank * layout.pp_microbatches)
    else:
        bubble = (layout.pp * layout.pp_stages_per_rank - 1) / layout.pp_microbatches
    comm = sum(t.bytes_per_step / (cluster.intra_node_bytes_per_s if t.intra_node else cluster.inter_node_bytes_per_s)
               for t in traffic)
    return compute * (1 + bubble) + comm


# --------------------------------------------------------------------------- planning


def planned_model(cfg, grid: tuple[int, int] | None = None) -> OrbitConfig:
    """The architecture of `cfg` (a RunConfig): `model.preset` with the `model.*` overrides, on `grid`
    (lat x lon of the data stores; default the preset's img_size). The vocabulary is the preset's,
    an upper bound of the channels a pretraining task feeds (only the small front end depends on it)."""
    overrides = cfg.model.overrides()
    if grid is not None:
        overrides["img_size"] = tuple(grid)
    return get_config(cfg.model.preset, **overrides)


def evaluate(config: OrbitConfig, layout: Layout, cluster: Cluster, *, batch_size: int, precision: str,
             flash_attention: bool = True) -> Plan:
    """Problems, memory, traffic and cost of one resolved layout."""
    plan = Plan(config, cluster, layout, batch_size, precision, flash_attention)
    dims = layout.dims(cluster.world_size)
    plan.problems = layout_problems(config, dims, layout, batch_size)
    if layout.engine == "deepspeed":
        try:
            check_deepspeed_layout(dims)
        except ValueError as err:
            plan.problems.append(str(err))
    if plan.problems:
        return plan
    kwargs = dict(batch_size=batch_size, precision=precision, flash_attention=flash_attention)
    plan.memory = memory_per_rank(config, layout, **kwargs)
    toggled = dataclasses.replace(layout, activation_checkpointing=not layout.activation_checkpointing)
    plan.memory_other_ac = memory_per_rank(config, toggled, **kwargs)
    plan.traffic = traffic_per_axis(config, layout, cluster, batch_size=batch_size, precision=precision)
    plan.step_seconds = step_seconds(config, layout, cluster, plan.traffic, batch_size=batch_size)
    if plan.step_seconds is not None:
        plan.cost = plan.step_seconds * cluster.world_size / (dims.dp * batch_size)
    return plan


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def candidate_layouts(config: OrbitConfig, cluster: Cluster, base: Layout, batch_size: int) -> list[Layout]:
    """Layouts of the fsdp engine that pass the cheap divisibility checks: tp dividing a node and the
    heads, sp dividing the remaining heads and the tokens, pp up to the depth with microbatch counts
    that divide the batch, dp_shard the rest; dp_replicate, schedule and stages per rank as configured;
    activation checkpointing off and on."""
    world = cluster.world_size
    replicate = base.dp_replicate if world % base.dp_replicate == 0 else 1
    out = []
    for tp in _divisors(cluster.gpus_per_node):
        if config.num_heads % tp or config.agg_heads % tp or world % (replicate * tp):
            continue
        for sp in _divisors(config.num_heads // tp):
            if config.num_tokens % sp or world % (replicate * tp * sp):
                continue
            for pp in _divisors(world // (replicate * tp * sp)):
                stages = pp * base.pp_stages_per_rank
                if pp > 1 and stages > config.depth:
                    break
                counts = [1] if pp == 1 else [m for m in _divisors(batch_size) if m >= stages]
                for microbatches in counts:
                    for ac in (False, True):
                        out.append(dataclasses.replace(
                            base, pp=pp, dp_replicate=replicate, dp_shard=world // (replicate * tp * sp * pp),
                            sp=sp, tp=tp, pp_microbatches=microbatches, activation_checkpointing=ac, engine="fsdp"))
    return out


def search(config: OrbitConfig, cluster: Cluster, base: Layout, *, batch_size: int, precision: str,
           flash_attention: bool = True, top: int = 5) -> list[Plan]:
    """The `top` cheapest valid layouts that fit (cost in the module docstring)."""
    plans = (evaluate(config, layout, cluster, batch_size=batch_size, precision=precision,
                      flash_attention=flash_attention)
             for layout in candidate_layouts(config, cluster, base, batch_size))
    fitting = [p for p in plans if p.fits and p.cost is not None]
    return sorted(fitting, key=lambda p: (p.cost, p.memory.total))[:top]


def configured_layout(cfg, world_size: int) -> Layout:
    """The layout of `cfg.parallel` and `cfg.train` on `world_size` ranks (ValueError if the degrees
    cannot multiply to it)."""
    p = cfg.parallel
    dims = parallel_dims_from(p, world_size)
    microbatches = (p.pp_microbatches or dims.pp * p.pp_stages_per_rank) if dims.pp > 1 else 1
    return Layout(**dims.degrees, pp_microbatches=microbatches, pp_stages_per_rank=p.pp_stages_per_rank,
                  pp_schedule=p.pp_schedule, activation_checkpointing=cfg.train.activation_checkpointing,
                  engine=p.engine, zero_stage=p.zero_stage)


def plan(cfg, cluster: Cluster, *, grid: tuple[int, int] | None = None, top: int = 5,
         always_suggest: bool = False, flash_attention: bool = True) -> Plan:
    """Plan `cfg` (a RunConfig) on `cluster`; suggestions when it is invalid or does not fit."""
    config = planned_model(cfg, grid)
    batch, precision = cfg.data.batch_size, cfg.train.precision
    try:
        layout = configured_layout(cfg, cluster.world_size)
    except ValueError as err:
        result = Plan(config, cluster, None, batch, precision, flash_attention, problems=[str(err)])
        base = Layout(pp=1, dp_replicate=cfg.parallel.dp_replicate, dp_shard=1, sp=1, tp=1,
                      pp_stages_per_rank=cfg.parallel.pp_stages_per_rank, pp_schedule=cfg.parallel.pp_schedule)
    else:
        result = evaluate(config, layout, cluster, batch_size=batch, precision=precision,
                          flash_attention=flash_attention)
        base = layout
    if always_suggest or not result.fits:
        result.suggestions = search(config, cluster, base, batch_size=batch, precision=precision,
                                    flash_attention=flash_attention, top=top)
    return result


# --------------------------------------------------------------------------- report


def _gib(value: float) -> str:
    return f"{value / GIB:8.2f} GiB"


def _node_zero(dims: ParallelDims, gpus_per_node: int) -> str:
    """Mesh coordinates of the ranks on the first node (tp innermost, so they are consecutive)."""
    ranks = range(min(gpus_per_node, dims.world_size))
    parts = []
    for i, axis in enumerate(AXES):
        stride = math.prod(getattr(dims, a) for a in AXES[i + 1:])
        coords = sorted({(r // stride) % getattr(dims, axis) for r in ranks})
        parts.append(f"{axis} {coords[0]}" if len(coords) == 1 else f"{axis} {coords[0]}-{coords[-1]}")
    return ", ".join(parts)


def _memory_lines(plan: Plan) -> list[str]:
    m, other, layout = plan.memory, plan.memory_other_ac, plan.layout
    working = ("bf16 gathered units (FSDP)" if plan.precision == "bf16" else "fp32 gathered units (FSDP)") \
        if m.working and layout.engine == "fsdp" and layout.dp_replicate * layout.dp_shard * layout.sp > 1 \
        else "bf16 autocast weight copies"
    on, off = (m, other) if layout.activation_checkpointing else (other, m)
    where = f" (fullest rank: pp rank {m.pp_rank})" if layout.pp > 1 else ""
    usable = plan.cluster.usable_bytes
    verdict = lambda mem: "fits" if mem.total <= usable else "DOES NOT FIT"  # noqa: E731
    return [
        f"memory per rank{where}, micro-batch {plan.batch_size / layout.pp_microbatches:g} samples:",
        f"  parameters (fp32 shards)        {_gib(m.params)}",
        f"  gradients (fp32 shards)         {_gib(m.grads)}",
        f"  optimizer (AdamW moments, fp32) {_gib(m.optimizer)}",
        f"  working copies                  {_gib(m.working)}  {working if m.working else ''}".rstrip(),
        f"  activations, checkpointing off  {_gib(off.activations)}",
        f"  activations, checkpointing on   {_gib(on.activations)}",
        f"  total, checkpointing off        {_gib(off.total)}  {verdict(off)}",
        f"  total, checkpointing on         {_gib(on.total)}  {verdict(on)}",
        f"  usable per GPU                  {_gib(usable)}  ({plan.cluster.gpu_memory_bytes / GIB:g} GiB "
        f"less {plan.cluster.headroom:.0%} headroom)",
    ]


def _traffic_lines(plan: Plan) -> list[str]:
    lines = ["communication per rank and step (comm_model; tp innermost, a node holds "
             f"{plan.cluster.gpus_per_node} consecutive ranks):",
             f"  {'axis':<12} {'group':>7} {'nodes/group':>12}  {'link':<28} {'sent':>12}"]
    for t in plan.traffic:
        span = str(t.nodes_per_group[0]) if t.nodes_per_group[0] == t.nodes_per_group[1] \
            else f"{t.nodes_per_group[0]}-{t.nodes_per_group[1]}"
        link = "intra-node (Infinity Fabric)" if t.intra_node else "inter-node (Slingshot)"
        sent = "not modelled" if t.bytes_per_step is None else _gib(t.bytes_per_step)
        lines.append(f"  {t.label:<12} {t.size:>7} {span:>12}  {link:<28} {sent:>12}")
    if not plan.traffic:
        lines.append("  (none: a single rank)")
    return lines


def _summary_line(plan: Plan) -> str:
    layout = plan.layout
    degrees = " ".join(f"{axis}={getattr(layout, axis)}" for axis in AXES)
    pipe = f" M={layout.pp_microbatches} {layout.pp_schedule}" if layout.pp > 1 else ""
    ac = "AC on" if layout.activation_checkpointing else "AC off"
    return (f"{plan.cost:8.3f} GPU-s/sample  {plan.memory.total / GIB:6.1f} GiB  {degrees}{pipe} {ac}\n"
            f"       {layout.overrides()}")


def format_plan(plan: Plan) -> str:
    """The report `orbit plan` prints."""
    c, cl = plan.model, plan.cluster
    lines = [
        f"model {c.name}: {num_params(c) / 1e9:.2f}B parameters, depth {c.depth}, width {c.embed_dim}, "
        f"{c.num_heads} heads, mlp_ratio {c.mlp_ratio:g}, {len(c.variables)} variables, "
        f"grid {c.img_size[0]}x{c.img_size[1]} / patch {c.patch_size} = {c.num_tokens} tokens",
        f"cluster: {cl.nodes} nodes x {cl.gpus_per_node} GPUs = {cl.world_size} ranks, "
        f"{cl.gpu_memory_bytes / GIB:g} GiB each; precision {plan.precision}, "
        f"{'flash' if plan.flash_attention else 'math'} attention",
    ]
    layout = plan.layout
    if layout is not None:
        dims = layout.dims(cl.world_size)
        pipe = (f", {layout.pp_microbatches} microbatches ({layout.pp_schedule}, {layout.pp_stages_per_rank} stage(s) per rank)"
                if layout.pp > 1 else "")
        lines += [
            f"layout: {' '.join(f'{a}={getattr(layout, a)}' for a in AXES)}{pipe}; engine {layout.engine}; "
            f"activation checkpointing {'on' if layout.activation_checkpointing else 'off'}",
            f"batch: {plan.batch_size} per data rank x {dims.dp} data ranks = {plan.batch_size * dims.dp} per step",
            f"node 0 holds ranks 0-{min(cl.gpus_per_node, cl.world_size) - 1}: {_node_zero(dims, cl.gpus_per_node)}",
        ]
    if plan.memory is not None:
        lines += ["", *_memory_lines(plan), "", *_traffic_lines(plan)]
        if plan.step_seconds is not None:
            lines.append(f"estimated step {plan.step_seconds:.3f} s at peak {cl.peak_flops / 1e12:g} TFLOP/s, "
                         f"{cl.intra_node_bytes_per_s / 1e9:g} GB/s intra-node, {cl.inter_node_bytes_per_s / 1e9:g} "
                         f"GB/s inter-node per GPU, no overlap -> cost {plan.cost:.3f} GPU-s per sample "
                         f"(a rough bound; --search gives the time model's step, MFU and faster layouts)")
    lines.append("")
    if plan.problems:
        lines += ["WARNING: invalid layout:", *(f"  - {p}" for p in plan.problems)]
    elif not plan.fits:
        lines.append(f"WARNING: does not fit: {plan.memory.total / GIB:.1f} GiB per rank > "
                     f"{cl.usable_bytes / GIB:.1f} GiB usable")
    else:
        lines.append(f"OK: fits ({plan.memory.total / GIB:.1f} of {cl.usable_bytes / GIB:.1f} GiB usable per GPU)")
    if plan.suggestions:
        lines += ["", "valid layouts that fit, cheapest first (cost: estimated GPU-seconds per sample; "
                  "paste the overrides after the config):"]
        lines += [f"  {i}. {_summary_line(p)}" for i, p in enumerate(plan.suggestions, 1)]
    elif not plan.fits:
        lines += ["", f"no layout of {cl.world_size} ranks fits with data.batch_size={plan.batch_size}: "
                  "use more nodes or a smaller data.batch_size"]
    return "\n".join(lines)
