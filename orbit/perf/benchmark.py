"""Scaling benchmark of the parallel engine: time, throughput, MFU, memory and bytes per mesh axis.

Each case (model size, layout, global batch) runs in spawned gloo ranks, one thread each, through
the trainer's pieces (`build_engine`, its clipping, AdamW as `orbit.train.optim` builds it; not
imported from there, since `train` imports `parallel`, not the reverse): one warm-up step (pipeline
shape inference, allocator), one step with the collectives counted per mesh axis (`CommCounter`;
counting is left out of the timed steps) and with the per-rank bytes of parameters, gradients and
AdamW state taken from the local shards, then `steps` timed steps (barrier-to-barrier wall time,
median). Cases of one world size share one spawn, so process start-up is paid once.
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from orbit.config import ParallelConfig
from orbit.models import create_model
from orbit.models.flops import model_info

from orbit.models.orbit_vit_parallel import ORBIT_VIT_PLAN
from orbit.perf.comm_model import expected_sent_bytes
from orbit.perf.comm_stats import CommCounter, mesh_axis_groups
from orbit.parallel.mesh import ParallelDims, parallel_dims_from
from orbit.parallel.parallelize import build_engine
from orbit.parallel.spawn import spawn

# Dense bf16 peak per device (FLOP/s) for MFU on known accelerators; matched in the device name.
GPU_PEAK_FLOPS = {"MI250X": 191.5e12, "H100": 989e12, "A100": 312e12}
BYTES_PER_PARAM_FP32_ADAMW = 4 + 4 + 8  # weight, gradient, two AdamW moments


@dataclass(frozen=True)
class ModelSize:
    """A small ORBIT (the `tiny` preset's 9 variables on a 32 x 64 grid, patch 4: 128 tokens)."""

    name: str
    embed_dim: int
    depth: int
    num_heads: int

    def build(self) -> nn.Module:
        return create_model("tiny", embed_dim=self.embed_dim, depth=self.depth, num_heads=self.num_heads)


SIZES = {size.name: size for size in (ModelSize("d128", 128, 4, 4), ModelSize("d256", 256, 4, 8))}


@dataclass(frozen=True)
class Case:
    """One measurement: `layout` holds `ParallelConfig` fields (degrees, pipeline schedule...)."""

    size: str
    world_size: int
    global_batch: int
    layout: tuple[tuple[str, Any], ...] = ()

    @property
    def parallel(self) -> ParallelConfig:
        return ParallelConfig(**{"dp_shard": -1, **dict(self.layout)})

    @property
    def dims(self) -> ParallelDims:
        return parallel_dims_from(self.parallel, self.world_size)

    @property
    def label(self) -> str:
        degrees = {k: v for k, v in self.dims.degrees.items() if v > 1}
        extra = {k: v for k, v in self.layout if k not in degrees and k not in ParallelDims.__dataclass_fields__}
        text = ",".join(f"{k}={v}" for k, v in {**degrees, **extra}.items())
        return text or "1 process"


def case(size: str, world_size: int, global_batch: int, **layout: Any) -> Case:
    """A case with every degree resolved (so equal layouts written differently are one case)."""
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; valid: {sorted(SIZES)}")
    dims = parallel_dims_from(ParallelConfig(**{"dp_shard": -1, **layout}), world_size)
    return Case(size, world_size, global_batch, tuple(sorted({**layout, **dims.degrees}.items())))


# Layouts at a fixed global batch (the strong-scaling sweep is its pure dp_shard and tp rows).
LAYOUTS = {
    1: [{}],
    2: [dict(dp_shard=2), dict(dp_replicate=2, dp_shard=1), dict(dp_shard=1, tp=2), dict(dp_shard=1, sp=2),
        dict(dp_shard=1, pp=2)],
    4: [dict(dp_shard=4), dict(dp_replicate=2, dp_shard=2), dict(dp_shard=2, tp=2), dict(dp_shard=1, tp=4),
        dict(dp_shard=1, sp=2, tp=2), dict(dp_shard=1, pp=2, tp=2), dict(dp_shard=1, pp=4)],
    8: [dict(dp_shard=8), dict(dp_replicate=2, dp_shard=2, tp=2), dict(dp_shard=2, sp=2, tp=2),
        dict(dp_shard=1, pp=2, sp=2, tp=2)],
}
STRONG_BATCH = 8
WEAK_BATCH_PER_RANK = 2


def default_cases(sizes: list[str], world_sizes: list[int]) -> dict[str, list[Case]]:
    """sweep name -> cases: "layouts" (every layout of `LAYOUTS`, global batch 8), "strong" (dp_shard = N
    and tp = N at global batch 8), "weak" (dp_shard = N at 2 samples per rank)."""
    bad = sorted(set(world_sizes) - set(LAYOUTS))
    if bad or 1 not in world_sizes:
        raise ValueError(f"world sizes must be among {sorted(LAYOUTS)} and include 1 (the baseline of the "
                         f"scaling tables); got {world_sizes}")
    sweeps: dict[str, list[Case]] = {"layouts": [], "strong": [], "weak": []}
    for size in sizes:
        for n in sorted(world_sizes):
            sweeps["layouts"] += [case(size, n, STRONG_BATCH, **layout) for layout in LAYOUTS[n]]
            sweeps["strong"].append(case(size, n, STRONG_BATCH, dp_shard=n))
            if n in (2, 4):  # tp = 8 would need 8 heads per rank for d128
                sweeps["strong"].append(case(size, n, STRONG_BATCH, dp_shard=1, tp=n))
            sweeps["weak"].append(case(size, n, WEAK_BATCH_PER_RANK * n, dp_shard=n))
    return sweeps


# ------------------------------------------------------------------------------------ per rank

def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def _nbytes(tensors) -> int:
    return sum(_local(t).numel() * _local(t).element_size() for t in tensors)


def state_bytes(parts: list[nn.Module], optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes this rank holds of parameters, gradients and optimizer state, from the local shards
    (a DTensor counts its local tensor: FSDP and TP shards, not the global size)."""
    params = [p for part in parts for p in part.parameters()]
    out = {
        "params": _nbytes(params),
        "grads": _nbytes(p.grad for p in params if p.grad is not None),
        "optimizer": _nbytes(v for state in optimizer.state.values() for v in state.values()
                             if isinstance(v, torch.Tensor)),
    }
    out["total"] = sum(out.values())
    return out


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: CUDA allocator stats, or the process's peak RSS (Linux VmHWM) on CPU."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif os.path.exists("/proc/self/clear_refs"):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := current RSS


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: max allocated; CPU: peak resident set size of this process since the last reset."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (output - target).pow(2).mean()


def _batch(model: nn.Module, batch: int) -> tuple[tuple, torch.Tensor]:
    """Random inputs for `model(*inputs)`: x (B, V, H, W), var_ids None, lead_hours (B,), no mask; target alike."""
    config = model.config
    gen = torch.Generator().manual_seed(0)
    shape = (batch, len(config.variables), *config.img_size)
    return (torch.randn(shape, generator=gen), None, torch.full((batch,), 24.0), None), torch.randn(shape, generator=gen)


def measure_case(c: Case, steps: int) -> dict[str, Any]:
    """This rank's figures for one case (call on every rank of a `c.world_size` process group)."""
    dims = c.dims
    local_batch = c.global_batch // dims.dp
    torch.manual_seed(0)
    model = SIZES[c.size].build()
    engine = build_engine(model, c.parallel, plan=ORBIT_VIT_PLAN, loss_fn=_mse, precision="fp32",
                          activation_checkpointing=False, batch_size=local_batch)
    params = [p for part in engine.parts for p in part.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05, foreach=False)  # as the trainer's
    inputs, target = _batch(model, local_batch)
    groups = mesh_axis_groups(engine.mesh) if engine.distributed else []
    device = torch.device("cpu")

    def step(record_state: bool = False) -> dict[str, int] | None:
        loss = engine.forward_backward(inputs, target)
        engine.mean_over_data_ranks(loss)
        engine.clip_grad_norm_(1.0)
        optimizer.step()
        held = state_bytes(engine.parts, optimizer) if record_state else None
        optimizer.zero_grad()
        return held

    reset_peak_memory(device)
    step()  # warm-up
    with CommCounter(groups) as counter:
        held = step(record_state=True)
    wall, cpu = [], []
    for _ in range(steps):
        _barrier()
        w0, c0 = time.perf_counter(), time.process_time()
        step()
        _barrier()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return {"wall_s": wall, "cpu_s": cpu, "state_bytes": held, "peak_memory": peak_memory_bytes(device),
            "sent": counter.sent_bytes(), "calls": {k: v.calls for k, v in counter.traffic.items()}}


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _run_on_ranks(rank: int, world_size: int, cases: list[Case], steps: int) -> list[dict[str, Any]]:
    return [measure_case(c, steps) for c in cases]


# ------------------------------------------------------------------------------------ driver

@dataclass
class Result:
    """One case's figures over its ranks (see `summarize`)."""

    case: Case
    step_s: float
    step_min_s: float
    cpu_s_per_rank: float
    samples_per_s: float
    tokens_per_s: float
    tflops_per_rank: float
    mfu: float
    peak_memory_mib: float
    state_mib_per_rank: float
    ideal_state_mib_per_rank: float
    counted_mb: dict[str, float] = field(default_factory=dict)
    analytic_mb: dict[str, float | None] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)


def summarize(c: Case, per_rank: list[dict[str, Any]], peak_flops_per_rank: float) -> Result:
    """Step time: median (and minimum) over steps of the slowest rank; bytes: mean over ranks; memory:
    worst rank.
    TFLOPS per rank = analytic training FLOPs of the global batch / step time / ranks; MFU divides
    it by one rank's peak. Tokens = spatial tokens after variable aggregation (B x L)."""
    size = SIZES[c.size]
    config = size.build().config
    info = model_info(config)
    slowest = [max(steps) for steps in zip(*(r["wall_s"] for r in per_rank))]
    step_s = statistics.median(slowest)
    flops = info["flops_per_sample_train"] * c.global_batch
    tflops = flops / step_s / c.world_size / 1e12
    labels = sorted({label for r in per_rank for label in r["sent"]})
    dims = c.dims
    parallel = c.parallel
    microbatches = parallel.pp_microbatches or dims.pp * parallel.pp_stages_per_rank
    analytic = expected_sent_bytes(config, dims, local_batch=c.global_batch // dims.dp,
                                   microbatches=microbatches if dims.pp > 1 else 1,
                                   stages_per_rank=parallel.pp_stages_per_rank)
    full_state = info["params"] * BYTES_PER_PARAM_FP32_ADAMW
    return Result(
        case=c, step_s=step_s, step_min_s=min(slowest),
        cpu_s_per_rank=statistics.mean(statistics.median(r["cpu_s"]) for r in per_rank),
        samples_per_s=c.global_batch / step_s,
        tokens_per_s=c.global_batch * config.num_tokens / step_s,
        tflops_per_rank=tflops, mfu=tflops * 1e12 / peak_flops_per_rank,
        peak_memory_mib=max(r["peak_memory"] for r in per_rank) / 2**20,
        state_mib_per_rank=max(r["state_bytes"]["total"] for r in per_rank) / 2**20,
        ideal_state_mib_per_rank=full_state / (c.world_size // dims.dp_replicate) / 2**20,
        counted_mb={k: statistics.mean(r["sent"].get(k, 0.0) for r in per_rank) / 1e6 for k in labels},
        analytic_mb={k: (None if v is None else v / 1e6) for k, v in analytic.items()},
        calls={k: max(r["calls"].get(k, 0) for r in per_rank) for k in labels},
    )


def matmul_peak_flops(n: int = 2048, repeats: int = 5) -> float:
    """fp32 GEMM FLOP/s of one thread (one rank's share of this CPU), best of `repeats` per CPU-second."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        best = float("inf")
        for _ in range(repeats):
            start = time.process_time()
            a @ b
            best = min(best, time.process_time() - start)
    finally:
        torch.set_num_threads(threads)
    return 2 * n**3 / best


def device_peak(device_name: str | None = None) -> tuple[float, str]:
    """(peak FLOP/s of one rank, where it comes from): the table for known GPUs, else a measured
    single-thread fp32 GEMM on this CPU."""
    if device_name is None and torch.cuda.is_available():
        device_name = torch.cuda.get_device_name()
    for key, flops in GPU_PEAK_FLOPS.items():
        if device_name and key in device_name:
            return flops, f"{key} dense bf16 peak from the vendor table: {flops / 1e12:.1f} TFLOP/s"
    flops = matmul_peak_flops()
    return flops, f"measured fp32 2048^2 GEMM on one thread: {flops / 1e9:.1f} GFLOP/s per rank"


def run_cases(cases: list[Case], steps: int, peak_flops_per_rank: float) -> list[Result]:
    """Measure every distinct case (one spawn per world size); results in the order given."""
    unique = list(dict.fromkeys(cases))
    for c in unique:
        if c.global_batch % c.dims.dp:
            raise ValueError(f"case {c.label}: global batch {c.global_batch} is not divisible by the "
                             f"{c.dims.dp} data-parallel ranks")
    results: dict[Case, Result] = {}
    for world_size in sorted({c.world_size for c in unique}):
        group = [c for c in unique if c.world_size == world_size]
        per_rank = spawn(_run_on_ranks, world_size, group, steps, timeout_s=1200)
        for i, c in enumerate(group):
            results[c] = summarize(c, [rank_results[i] for rank_results in per_rank], peak_flops_per_rank)
    return [results[c] for c in cases]
