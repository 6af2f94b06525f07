"""Step time of a training layout: compute per op group, α–β communication per axis, and the
schedule that decides what is exposed. Used by `orbit plan` (ranking layouts), `orbit bench
--predict` (checked against measured steps) and the published-figures table.

Notation as `plan` and `comm_model`: b micro-batch per data rank (= local batch / M), M pipeline
microbatches, L tokens, D width, a heads, r = mlp_ratio D, t = tp, s = sp, e bytes per activation
element (2 bf16, 4 fp32), T = b L / s tokens one rank holds in a block, K = pp v stages.

Compute per block and microbatch on one rank (times from the device profile, `devices`):
    GEMMs     q, k, v (T x D x D/t), proj (T x D/t x D), fc1 (T x D x r/t), fc2 (T x r/t x D):
              forward, then input- and weight-gradient GEMMs of the same shapes in backward
    attention F = 4 b L^2 D / (t s) forward (Ulysses: all L for a/(t s) heads), 3 F with backward
    norms     LN1, LN2 on T x D, QK-norm on 2 T x D/t: 5 e bytes per element (fwd 2 + bwd 3)
    GELU      T x r/t: 5 e per element
    simple    residual adds fwd + bwd 12 e T D, attention-output copy fwd + bwd 4 e T D/t,
              bias gradients (read dy) e T (2D + (3D + r)/t)
    dispatch  aten ops per block, 100 forward + 145 backward (views, copies and FSDP hooks included);
              under t > 1, 44 + 64 on DTensors (at the DTensor dispatch cost) and 34 + 49 plain
              (counted with a TorchDispatchMode on one step of the benchmark's model)
  Front end (first stage, full L on every sp rank) and head (last stage): their analytic FLOPs
  (`orbit.models.flops`) as GEMMs of b L V rows (front) and b L rows (head), forward + 2x backward,
  plus the loss's elementwise bytes.
  Activation checkpointing recomputes every block's forward (GEMMs, attention, elementwise, and
  its tensor-/sequence-parallel collectives) once in backward.
Optimizer (once per step, on the rank's stored shard P_r): AdamW + clipping move 96 bytes per
  parameter (84 AdamW as torch's single-tensor path, 12 the clip norm and scale), 8 in-place ops
  per parameter tensor (counted as the block ops: clipping and `_single_tensor_adamw`), through
  DTensor when FSDP or TP made the parameters DTensors.
  FSDP copies (in C, with FSDP): the two gathers of each unit copy it in and out (2 x 2 e_p P) and
  the reduce-scatter copies the fp32 gradients in and the shard out (2 x 4 P): 2 (2 e_p + 4) P bytes
  per step ("simple"), P = the rank's unsharded tp-local parameters, e_p their gathered bytes.

Communication per axis: bytes per step from `plan.traffic_per_axis` (the comm model, with its
FSDP-under-pipeline bound; FSDP over the sp ranks alone as "sp_fsdp", apart from Ulysses' "sp"),
split into calls (latency) by the counts in `calls_per_step`, each call
timed by `collectives.collective_time` on the axis's placement. Where the device has a measured
FSDP unit cost (the CPU, `calibrate`), an FSDP or replicate axis costs that per unit (gathered
twice, reduced once per step and microbatch) plus only the bandwidth terms of its collectives.

Schedule (what the step waits for):
    step = C + R + exposed_fsdp + exposed_tp + exposed_sp + exposed_pp + bubble + O + scalars
  C   forward + backward of the rank's microbatches, R the recompute
  FSDP all-gathers (prefetched) and reduce-scatters, HSDP/replicate all-reduces run under
      compute when the device overlaps (GPUs): exposed = max(0, T_fsdp - (C + R)) + one unit's
      gather + one unit's reduce-scatter; on a CPU (gloo shares the core) all of T_fsdp
  tensor-parallel all-reduces and Ulysses all-to-alls sit on the critical path: all exposed
  pipeline: exposed sends 2 (K-1) per-microbatch sends (fill and drain) on GPUs, all on a CPU;
      bubble = f (C + R + exposed_tp + exposed_sp), f = (K-1)/M (GPipe, 1F1B), (pp-1)/(v M) interleaved
  O   optimizer; data loading assumed hidden by loader workers (0; the trainer logs its wait)
  scalars: the loss average and gradient-norm all-reduces over all ranks (latency only).
Outputs: samples/s = global batch / step; model FLOPs = 3 x forward of the global batch (no
recompute, as MFU is defined by Chowdhery et al. 2022); TFLOP/s per device = model FLOPs / step /
ranks; MFU = that / the device's dense peak; total PFLOP/s = model FLOPs / step.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

from orbit.models.config import OrbitConfig
from orbit.models.flops import forward_flops, model_info
from orbit.perf.collectives import collective_time
from orbit.perf.devices import DeviceProfile, System
from orbit.perf.plan import FP32, Cluster, Layout, traffic_per_axis, unit_elements, _param_shapes
from orbit.parallel.pipeline import stage_block_ranges

# aten ops per block (forward, backward), counted with a TorchDispatchMode on the benchmark's d128
# model (depth 8 minus depth 4, one step): 245 without tp; under tp 108 on DTensors + 83 plain.
BLOCK_OPS = (100, 145)
BLOCK_TP_DTENSOR_OPS, BLOCK_TP_PLAIN_OPS = (44, 64), (34, 49)
FRONT_HEAD_OPS = 80  # forward + backward of the front end, head and loss
ADAMW_BYTES_PER_PARAM, CLIP_BYTES_PER_PARAM = 84, 12
OPTIMIZER_OPS_PER_TENSOR = 8
FSDP_LABELS = ("dp_shard", "dp_shard_sp", "sp_fsdp")


@dataclass
class StepTime:
    """Predicted step of one rank (the slowest pipeline rank), seconds, and what follows from it."""

    world_size: int
    global_batch: int
    model_flops: float  # per step, all ranks (3 x forward)
    peak_flops: float  # one device's dense peak
    compute_s: float
    recompute_s: float
    optimizer_s: float
    bubble_s: float
    comm_s: dict[str, float] = field(default_factory=dict)  # per axis, all of it
    exposed_s: dict[str, float] = field(default_factory=dict)  # per axis, what the step waits for
    data_s: float = 0.0

    @property
    def step_s(self) -> float:
        return (self.compute_s + self.recompute_s + self.optimizer_s + self.bubble_s + self.data_s
                + sum(self.exposed_s.values()))

    @property
    def samples_per_s(self) -> float:
        return self.global_batch / self.step_s

    @property
    def tflops_per_device(self) -> float:
        return self.model_flops / self.step_s / self.world_size / 1e12

    @property
    def mfu(self) -> float:
        return self.tflops_per_device * 1e12 / self.peak_flops

    @property
    def pflops(self) -> float:
        return self.model_flops / self.step_s / 1e15

    def breakdown(self) -> dict[str, float]:
        """Seconds per term of the step (module docstring), exposed communication per axis."""
        out = {"compute": self.compute_s, "recompute": self.recompute_s, "optimizer": self.optimizer_s,
               "bubble": self.bubble_s, "data": self.data_s}
        out.update({f"comm {label}": value for label, value in self.exposed_s.items()})
        return out

    def as_dict(self) -> dict:
        return {"step_s": self.step_s, "samples_per_s": self.samples_per_s,
                "tflops_per_device": self.tflops_per_device, "mfu": self.mfu, "pflops": self.pflops,
                "breakdown_s": self.breakdown(), "comm_total_s": dict(self.comm_s)}


# --------------------------------------------------------------------------- compute


def block_times(config: OrbitConfig, device: DeviceProfile, micro_batch: float, *, tp: int, sp: int,
                elem_bytes: int) -> tuple[float, float]:
    """(forward, backward) seconds of one block on one rank for one microbatch (module docstring)."""
    D, L, t = config.embed_dim, config.num_tokens, tp
    r = int(config.embed_dim * config.mlp_ratio)
    T, e = micro_batch * L / sp, elem_bytes
    shapes = [(T, D, D / t)] * 3 + [(T, D / t, D), (T, D, r / t), (T, r / t, D)]
    fwd = sum(device.gemm_time("forward", m, k, n, e) for m, k, n in shapes)
    bwd = sum(device.gemm_time("input_grad", m, n, k, e) + device.gemm_time("weight_grad", n, m, k, e)
              for m, k, n in shapes)
    flops = 4 * micro_batch * L * L * D / (t * sp)
    att_fwd = device.attention["forward"].time(flops)
    fwd += att_fwd
    bwd += max(device.attention["forward_backward"].time(3 * flops) - att_fwd, 0.0)
    norm = [5 * e * T * D] * 2 + ([5 * e * T * D / t] * 2 if config.qk_norm else [])
    ew = sum(device.elementwise["norm"].time(x) for x in norm) + device.elementwise["gelu"].time(5 * e * T * r / t)
    simple = [3 * e * T * D] * 4 + [2 * e * T * D / t] * 2 + [e * T * (2 * D + (3 * D + r) / t)]
    ew += sum(device.elementwise["simple"].time(x) for x in simple)
    fwd, bwd = fwd + 0.4 * ew, bwd + 0.6 * ew
    if tp > 1:
        fwd += BLOCK_TP_DTENSOR_OPS[0] * device.dtensor_op_overhead_s + BLOCK_TP_PLAIN_OPS[0] * device.op_overhead_s
        bwd += BLOCK_TP_DTENSOR_OPS[1] * device.dtensor_op_overhead_s + BLOCK_TP_PLAIN_OPS[1] * device.op_overhead_s
    else:
        fwd += BLOCK_OPS[0] * device.op_overhead_s
        bwd += BLOCK_OPS[1] * device.op_overhead_s
    return fwd, bwd


def front_head_times(config: OrbitConfig, device: DeviceProfile, micro_batch: float, *, tp: int,
                     elem_bytes: int) -> tuple[float, float]:
    """(front end, head) seconds, forward + backward, of one microbatch (module docstring)."""
    flops = forward_flops(config, batch_size=1)
    b, L, D, V = micro_batch, config.num_tokens, config.embed_dim, len(config.variables)
    out = len(config.out_variables) * config.patch_size**2
    front_f = b * (flops["aggregation"] + flops["lead_time"] + flops["tokenizer"]) / tp + flops.get("frontend_fold", 0)
    rows = b * L * V

    def gemm_like(total: float, m: float) -> float:
        k = n = max(total / (2 * m), 1.0) ** 0.5
        return sum(device.gemm_time(kind, m, k, n, elem_bytes) for kind in ("forward", "input_grad", "weight_grad"))

    front = gemm_like(front_f, rows) + device.elementwise["simple"].time(5 * elem_bytes * rows * config.patch_size**2)
    head = gemm_like(flops["head"] * b, b * L) + device.elementwise["norm"].time(5 * elem_bytes * b * L * D)
    head += device.elementwise["simple"].time(6 * FP32 * b * L * out)
    overhead = FRONT_HEAD_OPS / 2 * device.op_overhead_s
    return front + overhead, head + overhead


def _rank_params(config: OrbitConfig, layout: Layout) -> tuple[float, int]:
    """(parameters stored by the fullest pp rank, its number of parameter tensors)."""
    fsdp = layout.engine == "fsdp" and layout.dp_shard * layout.sp > 1
    shards = layout.dp_shard * layout.sp if fsdp else 1
    units = unit_elements(config, layout.tp, shards)
    shapes = _param_shapes(config)
    stages = layout.pp * layout.pp_stages_per_rank
    ranges = stage_block_ranges(config.depth, stages)
    best = (0.0, 0)
    for rank in range(layout.pp):
        mine = range(rank, stages, layout.pp)
        blocks = sum(len(ranges[s]) for s in mine)
        names = ["block"] * blocks + ["front"] * (0 in mine) + ["head"] * (stages - 1 in mine)
        stored = sum(units[n][1] for n in names)
        tensors = sum(len(shapes[n]) for n in names)
        best = max(best, (stored, tensors))
    return best


def fsdp_copy_time(config: OrbitConfig, layout: Layout, device: DeviceProfile, param_bytes: int) -> float:
    """FSDP's copy-in/copy-out around its gathers and reduce-scatters (module docstring); 0 without FSDP."""
    if layout.engine != "fsdp" or layout.dp_shard * layout.sp == 1:
        return 0.0
    units = unit_elements(config, layout.tp, 1)
    full = (config.depth * units["block"][0] + units["front"][0] + units["head"][0]) / layout.pp
    return device.elementwise["simple"].time(2 * (2 * param_bytes + FP32) * full)


def optimizer_time(config: OrbitConfig, layout: Layout, device: DeviceProfile) -> float:
    """AdamW + clipping on the rank's shard (module docstring)."""
    params, tensors = _rank_params(config, layout)
    dtensor = layout.tp > 1 or (layout.engine == "fsdp" and layout.dp_replicate * layout.dp_shard * layout.sp > 1)
    per_op = device.dtensor_inplace_op_s if dtensor else device.inplace_op_s
    simple = device.elementwise["simple"]
    seconds = tensors * OPTIMIZER_OPS_PER_TENSOR * per_op
    seconds += (ADAMW_BYTES_PER_PARAM + CLIP_BYTES_PER_PARAM) * params / simple.rate
    return seconds


# --------------------------------------------------------------------------- communication


def calls_per_step(config: OrbitConfig, layout: Layout, label: str) -> dict[str, float]:
    """op -> collective calls one rank issues per step on axis `label` (module docstring)."""
    M, ac = layout.pp_microbatches, int(layout.activation_checkpointing)
    blocks = config.depth / layout.pp
    units = blocks + 1
    if label in FSDP_LABELS:
        gathers = 2 * units * (M if layout.pp > 1 else 1)
        return {"all_gather": gathers, "reduce_scatter": units}
    if label == "dp_replicate":
        return {"all_reduce": units}
    if label == "tp":  # + without FSDP, one all-reduce per replicated block parameter's gradient (12)
        fsdp = layout.dp_replicate * layout.dp_shard * layout.sp > 1
        return {"all_reduce": M * blocks * (6 + 2 * ac) + (4 if fsdp else 16) * blocks + 2 * M / layout.pp}
    if label == "sp":
        return {"all_to_all": M * blocks * (8 + 4 * ac) + M / layout.pp}
    if label == "pp":
        return {"send_recv": 2 * M * (layout.pp * layout.pp_stages_per_rank - 1) / layout.pp}
    return {}


def _split_bytes(sent: float, calls: dict[str, float], param_bytes: int) -> dict[str, float]:
    """Bytes sent per op of an axis: FSDP gathers e_p P per gather and reduce-scatters 4 P."""
    if set(calls) == {"all_gather", "reduce_scatter"}:
        gather = calls["all_gather"] * param_bytes
        scatter = calls["reduce_scatter"] * FP32
        return {"all_gather": sent * gather / (gather + scatter), "reduce_scatter": sent * scatter / (gather + scatter)}
    return {op: sent for op in calls}


def _sent_factor(op: str, n: int) -> float:
    if op == "all_reduce":
        return 2 * (n - 1) / n
    return 1.0 if op == "send_recv" else (n - 1) / n


def axis_times(config: OrbitConfig, layout: Layout, system: System, nodes: int, *, batch_size: int,
               precision: str) -> dict[str, dict[str, tuple[float, float]]]:
    """label -> {op: (calls per step, seconds per call)}, from the comm model's bytes per axis."""
    cluster = Cluster(nodes, system.gpus_per_node)
    fsdp = layout.dp_replicate * layout.dp_shard * layout.sp > 1
    param_bytes = 2 if precision == "bf16" and fsdp else FP32
    out = {}
    for traffic in traffic_per_axis(config, layout, cluster, batch_size=batch_size, precision=precision,
                                    fsdp_apart_from_sp=True):
        calls = calls_per_step(config, layout, traffic.label)
        if not calls or not traffic.bytes_per_step:
            continue
        n, span = traffic.size, traffic.nodes_per_group[1]
        sent = _split_bytes(traffic.bytes_per_step, calls, param_bytes)
        unit_kind = fsdp_unit_kind(traffic.label, system.device)
        out[traffic.label] = {}
        for op, count in calls.items():
            count = max(count, 1.0)
            payload = sent[op] / count / _sent_factor(op, n)
            each = collective_time(op, payload, n, span, system)
            if unit_kind:  # the measured unit cost holds the latency: keep the bandwidth term
                each -= collective_time(op, 1.0, n, span, system)
            out[traffic.label][op] = (count, each)
        if unit_kind:
            units = calls.get("all_gather", 2 * calls.get("all_reduce", 0)) / 2
            out[traffic.label]["fsdp units"] = (units, system.device.fsdp_unit_s[unit_kind])
    return out


def fsdp_unit_kind(label: str, device: DeviceProfile) -> str | None:
    """"shard" / "replicate" where the device has a measured FSDP unit cost for this axis, else None."""
    kind = "shard" if label in FSDP_LABELS else "replicate" if label == "dp_replicate" else None
    return kind if kind and device.fsdp_unit_s and kind in device.fsdp_unit_s else None


# --------------------------------------------------------------------------- the step


def predict(config: OrbitConfig, layout: Layout, system: System, nodes: int, *, batch_size: int,
            precision: str) -> StepTime:
    """Predicted step of `layout` on `nodes` nodes of `system`, `batch_size` samples per data rank."""
    device = system.device
    if device.precision != precision:
        raise ValueError(f"the {device.name} profile is for {device.precision}, the run uses {precision}; "
                         f"build the profile for {precision}")
    world = nodes * system.gpus_per_node
    dims = layout.dims(world)
    e = 2 if precision == "bf16" else 4
    M = layout.pp_microbatches
    micro = batch_size / M
    blocks = config.depth / layout.pp
    fwd, bwd = block_times(config, device, micro, tp=layout.tp, sp=layout.sp, elem_bytes=e)
    front, head = front_head_times(config, device, micro, tp=layout.tp, elem_bytes=e)
    ends = front + head if layout.pp == 1 else max(front, head)
    compute = M * (blocks * (fwd + bwd) + ends) + fsdp_copy_time(config, layout, device, e)
    recompute = M * blocks * fwd if layout.activation_checkpointing else 0.0
    optimizer = optimizer_time(config, layout, device)

    comm = axis_times(config, layout, system, nodes, batch_size=batch_size, precision=precision)
    totals = {label: sum(calls * each for calls, each in ops.values()) for label, ops in comm.items()}
    exposed: dict[str, float] = {}
    overlappable = [label for label in totals if label in FSDP_LABELS or label == "dp_replicate"]
    hidden = sum(totals[label] for label in overlappable)
    over = max(0.0, hidden - (compute + recompute))
    for label in overlappable:
        if device.overlap_comm:  # the share of what compute cannot hide, plus the first gather and last reduce
            edges = sum(each for _, each in comm[label].values())
            exposed[label] = over * totals[label] / hidden + edges
        else:
            exposed[label] = totals[label]
    for label in ("tp", "sp"):
        if label in totals:
            exposed[label] = totals[label]
    if "pp" in totals:
        calls, each = comm["pp"]["send_recv"]
        fill = 2 * (layout.pp * layout.pp_stages_per_rank - 1) * each
        exposed["pp"] = min(fill, totals["pp"]) if device.overlap_comm else totals["pp"]
    stage = compute + recompute + exposed.get("tp", 0.0) + exposed.get("sp", 0.0)
    bubble = stage * bubble_fraction(layout)
    if world > 1:
        exposed["scalars"] = 2 * collective_time("all_reduce", FP32, world, nodes, system)
    flops = train_flops_per_sample(config) * batch_size * dims.dp
    return StepTime(world, batch_size * dims.dp, flops, device.peak_flops, compute, recompute, optimizer,
                    bubble, totals, exposed)


@functools.lru_cache(maxsize=64)
def train_flops_per_sample(config: OrbitConfig) -> float:
    """3 x forward FLOPs of one sample (`model_info`, as the benchmark's and the trainer's MFU)."""
    return model_info(config)["flops_per_sample_train"]


def bubble_fraction(layout: Layout) -> float:
    """Idle fraction of a pipeline rank's work: (K-1)/M for GPipe and 1F1B (K = pp x stages per
    rank), (pp-1)/(v M) for interleaved 1F1B (Narayanan et al. 2021); 0 without a pipeline."""
    if layout.pp == 1:
        return 0.0
    if layout.pp_schedule == "interleaved_1f1b":
        return (layout.pp - 1) / (layout.pp_stages_per_rank * layout.pp_microbatches)
    return (layout.pp * layout.pp_stages_per_rank - 1) / layout.pp_microbatches
