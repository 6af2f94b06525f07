"""Analytic bytes each rank should send per training step on each mesh axis, for a layout.

The counterpart of `comm_stats` (which counts them), in the same convention: bytes one rank sends
under a bandwidth-optimal algorithm, all-reduce 2 (n-1)/n S, all-gather / reduce-scatter /
all-to-all (n-1)/n S, send S (S = payload, n = group size). Mean over the ranks of the world.

Notation: b local batch per data rank, M pipeline microbatches, L tokens, D width, t = tp,
s = sp, n = dp_shard * sp (FSDP shard group), r = dp_replicate, K = pp * stages_per_rank stages,
d_h head dim, V variables, k = patch^2 pixels; P_blocks, P_root: parameters per tp rank of the
transformer blocks and of the rest (front end, head), this rank's pipeline stage.

- FSDP2 (n > 1 or r > 1), per step, no pipeline: every unit (each block, and the root holding the
  rest) is all-gathered in forward and again in backward, since `apply_fsdp` reshards every unit
  after forward (the root included: FSDP2 would keep the root gathered only by default);
  gradients are reduce-scattered once:
      all-gather (n-1)/n * 4 * 2 (P_blocks + P_root),  reduce-scatter (n-1)/n * 4 (P_blocks + P_root),
      HSDP all-reduce of the gradient shard over dp_replicate: 2 (r-1)/r * 4 (P_blocks + P_root) / n.
  Under a pipeline, how often a stage is re-gathered depends on the schedule (torch keeps it
  gathered between microbatches' backwards): not modelled (None).
- Tensor parallel (our DTensor plan), activations A = b (L/s) D per block:
      forward: 2 all-reduces of A per block (attention and MLP outputs) + 1 of b L D (aggregation);
      backward: 4 all-reduces of A per block (input gradients of q, k, v — separate projections —
      and fc1), the QK-norm weight gradients (4 d_h per block) and the gradients of the parameters
      the fused front end feeds into the head-sharded aggregation (V D k + V D).
- Ulysses (s > 1), per block on D/t local width: forward all-to-all of q, k, v (3 b (L/s) D/t) and of
  the output (b (L/s) D/t), the same two in backward; all-gather of the bands before the head (b L D).
- Pipeline: each microbatch's activation b/M (L/s) D crosses each of the K-1 stage boundaries
  forward and its gradient backward: 2 (K-1) M (b/M) (L/s) D * 4 bytes over the pp group.

Axes whose traffic shares one process group are reported under one label (see `axis_label`).
Scalars (loss averages, gradient norms) are left out.
"""
from __future__ import annotations

import functools

import torch

from orbit.models.config import OrbitConfig
from orbit.models.orbit_vit import OrbitViT

from orbit.parallel.mesh import ParallelDims

FP32 = 4
# (base axes) of each flattened mesh, and the order labels are preferred in (as comm_stats.AXIS_LABELS)
FLATTENED = {"dp_shard_sp": ("dp_shard", "sp"), "dp": ("dp_replicate", "dp_shard"),
             "loss": ("dp_replicate", "dp_shard", "sp")}
# Parameters a tp rank holds 1/tp of (Megatron plan: column-parallel weights and biases,
# row-parallel weights; the aggregation's per-head query, keys and values).
TP_SHARDED_BLOCK = ("attn.q_proj.", "attn.k_proj.", "attn.v_proj.", "attn.proj.weight", "mlp.fc1.", "mlp.fc2.weight")
TP_SHARDED_AGGREGATION = ("aggregation.query", "aggregation.k_proj.", "aggregation.v_proj.",
                          "aggregation.proj.weight")


def axis_label(name: str, dims: ParallelDims) -> str:
    """The label `comm_stats` counts traffic of mesh `name` under: a flattened mesh with a single
    base axis > 1 holds that axis's ranks, so it is reported as that axis."""
    if name not in FLATTENED:
        return name
    on = [axis for axis in FLATTENED[name] if getattr(dims, axis) > 1]
    return on[0] if len(on) == 1 else name


@functools.lru_cache(maxsize=64)
def params_per_tp_rank(config: OrbitConfig, tp: int) -> dict[str, list[int]]:
    """Elements per tp rank: {"blocks": [per block], "front": front end + embeddings, "head": norm + head}.

    Cached (a planner's layout search asks again for every layout); callers must not mutate the result."""
    with torch.device("meta"):
        model = OrbitViT(config)

    def local(name: str, param: torch.Tensor, sharded: tuple[str, ...]) -> int:
        return param.numel() // tp if name.startswith(sharded) else param.numel()

    blocks = [sum(local(n, p, TP_SHARDED_BLOCK) for n, p in block.named_parameters()) for block in model.blocks]
    head = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("norm.", "head.")))
    front = sum(local(n, p, TP_SHARDED_AGGREGATION) for n, p in model.named_parameters()
                if not n.startswith(("blocks.", "norm.", "head.")))
    return {"blocks": blocks, "front": [front], "head": [head]}


def fsdp_label(dims: ParallelDims, *, apart_from_sp: bool = False) -> str:
    """The label of FSDP's traffic: `axis_label("dp_shard_sp")`, which is "sp" when FSDP shards over
    the sp ranks alone; `apart_from_sp` names that case "sp_fsdp", so a time model can tell FSDP's
    gathers from Ulysses' all-to-alls on the same process group."""
    label = axis_label("dp_shard_sp", dims)
    return "sp_fsdp" if apart_from_sp and label == "sp" else label


def expected_sent_bytes(config: OrbitConfig, dims: ParallelDims, *, local_batch: int, microbatches: int = 1,
                        stages_per_rank: int = 1, param_bytes: int = FP32,
                        fsdp_apart_from_sp: bool = False) -> dict[str, float | None]:
    """label -> bytes one rank sends per step on that axis, averaged over ranks (see module doc).
    `param_bytes` is 2 when FSDP gathers bf16 parameters; gradients and activations are fp32.
    `fsdp_apart_from_sp`: FSDP over the sp ranks alone under "sp_fsdp" (`fsdp_label`), not "sp"."""
    b, L, D = local_batch, config.num_tokens, config.embed_dim
    t, s, pp, r = dims.tp, dims.sp, dims.pp, dims.dp_replicate
    n = dims.dp_shard * dims.sp
    per_rank: dict[str, float | None] = {}

    def add(mesh_name: str, value: float | None) -> None:
        label = fsdp_label(dims, apart_from_sp=fsdp_apart_from_sp) if mesh_name == "dp_shard_sp" \
            else axis_label(mesh_name, dims)
        old = per_rank.get(label, 0.0)
        per_rank[label] = None if value is None or old is None else old + value

    params = params_per_tp_rank(config, t)
    blocks_per_rank = sum(params["blocks"]) / pp  # mean over the pp ranks (stages hold disjoint blocks)
    root_per_rank = (params["front"][0] + params["head"][0]) / pp
    if n > 1 or r > 1:
        if pp > 1:
            add("dp_shard_sp", None if n > 1 else 0.0)
        elif n > 1:
            gather = (n - 1) / n * param_bytes * 2 * (blocks_per_rank + root_per_rank)
            scatter = (n - 1) / n * FP32 * (blocks_per_rank + root_per_rank)
            add("dp_shard_sp", gather + scatter)
        if r > 1:
            add("dp_replicate", None if pp > 1 else 2 * (r - 1) / r * FP32 * (blocks_per_rank + root_per_rank) / n)
    depth_per_rank = config.depth / pp
    if t > 1:
        A = b * (L // s) * D
        elements = depth_per_rank * (6 * A + (4 * config.head_dim if config.qk_norm else 0))
        V, k = len(config.variables), config.patch_size ** 2
        front_grads = V * D * k + V * D if config.fused_frontend else b * V * L * D
        elements += (b * L * D + front_grads) / pp  # the aggregation lives on the first stage
        add("tp", 2 * (t - 1) / t * FP32 * elements)
    if s > 1:
        band = b * (L // s) * (D // t)
        add("sp", (s - 1) / s * FP32 * (depth_per_rank * 8 * band + b * L * D / pp))
    if pp > 1:
        stages = pp * stages_per_rank
        add("pp", 2 * (stages - 1) * b * (L // s) * D * FP32 / pp)
    return per_rank
