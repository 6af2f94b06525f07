"""Device and system profiles for the time model: how fast one rank computes, and its links.

A `DeviceProfile` turns work into seconds per op group (the "efficiency curves"):

    GEMM         t = c0 + max(F / R, bytes / W)    F = 2 M K N, R = achieved rate, W = HBM bytes/s
                 (a measured table, the CPU's: R of the measured shape nearest in log M, log K, log N)
    attention    t = c0 + F / R_attn               F = 4 B h L^2 d forward, 3x that forward+backward
    elementwise  t = c0 + bytes / W_kind           kinds: "simple" (adds, in-place updates),
                                                   "gelu", "norm" (layer norm), fwd+bwd bytes
    dispatch     op_overhead_s per op (framework + launch), dtensor_op_overhead_s per op on a DTensor
                 (autograd ops of the blocks); inplace_op_s / dtensor_inplace_op_s per in-place op
                 without autograd (the optimizer's)
    FSDP units   fsdp_unit_s["shard" | "replicate"]: where measured (the CPU), the fixed cost of one
                 FSDP unit per forward + backward (its collectives' latency, hooks, copy-in/out,
                 DTensor wrapping), taking the place of the α terms of its collectives

so the achieved rate of a GEMM, F / t = R F / (F + c0 R), rises with its size towards R.

GPU profiles come from vendor specs (peak dense matmul FLOP/s, HBM bandwidth, memory) times
achieved fractions that are *assumptions* (stated per profile, `assumptions`), to be checked with
`benchmarks/gpu_step.py` on the device; the CPU profile comes only from micro-measurements
(`orbit.perf.calibrate`: GEMM, SDPA and elementwise rates, dispatch per op, gloo collectives).

A `System` is a node type: its device, ranks per node, and two link classes for the α-β model of
`orbit.perf.collectives`: intra-node (Infinity Fabric, NVLink; per rank) and inter-node (Slingshot,
InfiniBand; per NIC, `nics_per_node` NICs shared by the node's ranks).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

GIB = 1024**3
COLLECTIVE_OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv")


@dataclass(frozen=True)
class Rate:
    """t = c0_s + work / rate (work in FLOPs or bytes)."""

    c0_s: float
    rate: float

    def time(self, work: float) -> float:
        return self.c0_s + work / self.rate if work > 0 else 0.0


@dataclass(frozen=True)
class DeviceProfile:
    """One rank's compute (module docstring). `peak_flops` is the dense matmul peak of the precision
    the profile is for (the MFU denominator)."""

    name: str
    precision: str
    peak_flops: float
    memory_bytes: int
    hbm_bytes_per_s: float
    gemm: dict[str, Rate]  # "forward", "input_grad", "weight_grad"
    attention: dict[str, Rate]  # "forward", "forward_backward"
    elementwise: dict[str, Rate]  # "simple", "gelu", "norm"
    op_overhead_s: float
    dtensor_op_overhead_s: float
    inplace_op_s: float
    dtensor_inplace_op_s: float
    overlap_comm: bool  # collectives progress beside compute (GPU copy engines / NICs); CPU: no
    source: str
    assumptions: tuple[str, ...] = ()
    gemm_table: dict[str, tuple[tuple[float, float, float, float], ...]] | None = None  # kind -> (M, K, N, FLOP/s)
    fsdp_unit_s: dict[str, float] | None = None  # "shard" / "replicate" -> s per unit and step; None: α-β alone

    def gemm_time(self, kind: str, m: float, k: float, n: float, elem_bytes: int) -> float:
        """One GEMM of an (m x k) by (k x n) product: roofline of its FLOPs and bytes plus c0."""
        if m <= 0 or k <= 0 or n <= 0:
            return 0.0
        rate = self.gemm[kind]
        flops, moved = 2 * m * k * n, elem_bytes * (m * k + k * n + m * n)
        if self.gemm_table:
            near = min(self.gemm_table[kind], key=lambda row: sum(math.log(a / b) ** 2 for a, b in zip(row, (m, k, n))))
            return flops / near[3]
        return rate.c0_s + max(flops / rate.rate, moved / self.hbm_bytes_per_s)


@dataclass(frozen=True)
class Link:
    """A link class: α per message step, β bytes/s. `per_op` overrides (α, β) for one collective
    (the CPU's gloo collectives are measured one by one)."""

    name: str
    alpha_s: float
    bytes_per_s: float
    per_op: dict[str, tuple[float, float]] = field(default_factory=dict)

    def alpha_beta(self, op: str) -> tuple[float, float]:
        return self.per_op.get(op, (self.alpha_s, self.bytes_per_s))


@dataclass(frozen=True)
class System:
    """A node type: device, ranks per node, intra-node link (per rank) and NICs (inter-node)."""

    name: str
    device: DeviceProfile
    gpus_per_node: int
    intra: Link
    inter: Link  # per NIC
    nics_per_node: int

    @property
    def node_inter_bytes_per_s(self) -> float:
        return self.nics_per_node * self.inter.bytes_per_s


# --------------------------------------------------------------------------- GPU profiles (specs)

# Achieved fractions shared by the GPU profiles: assumptions, not measurements (see gpu_step.py).
GPU_ASSUMPTIONS = (
    "flash attention: 0.55 of the GEMM rate forward, 0.40 forward+backward (FlashAttention-2 paper's "
    "ratios on A100; assumed alike on the other devices)",
    "elementwise: 0.8 of the HBM bandwidth; GEMM c0 and op overhead 5 us (kernel launch), DTensor 30 us",
    "link α: 10 us intra-node, 20 us inter-node per message step (RCCL/NCCL small-message latency)",
)


def _gpu(name: str, peak_bf16: float, peak_fp32: float, hbm: float, memory: int, gemm_eff: float,
         source: str, precision: str = "bf16", launch_s: float = 5e-6) -> DeviceProfile:
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision {precision!r} is not one of bf16, fp32")
    peak = peak_bf16 if precision == "bf16" else peak_fp32
    rate = gemm_eff * peak
    return DeviceProfile(
        name=name, precision=precision, peak_flops=peak, memory_bytes=memory, hbm_bytes_per_s=hbm,
        gemm={kind: Rate(launch_s, rate) for kind in ("forward", "input_grad", "weight_grad")},
        attention={"forward": Rate(launch_s, 0.55 * rate), "forward_backward": Rate(3 * launch_s, 0.40 * rate)},
        elementwise={kind: Rate(launch_s, 0.8 * hbm) for kind in ("simple", "gelu", "norm")},
        op_overhead_s=launch_s, dtensor_op_overhead_s=30e-6, inplace_op_s=launch_s, dtensor_inplace_op_s=30e-6,
        overlap_comm=True, source=source,
        assumptions=(f"large GEMMs reach {gemm_eff:.2f} of the dense peak (a tuned BLAS on large bf16 GEMMs)",
                     *GPU_ASSUMPTIONS))


def mi250x_gcd(precision: str = "bf16") -> DeviceProfile:
    """One MI250X GCD (half a package): 191.5 TFLOP/s bf16 dense, 47.9 fp32 matrix, 1.6 TB/s, 64 GiB."""
    return _gpu("MI250X GCD", 191.5e12, 47.9e12, 1.6e12, 64 * GIB, 0.60,
                "AMD Instinct MI250X data sheet (383 TFLOP/s bf16, 3.2 TB/s, 128 GB per package of 2 GCDs)",
                precision, launch_s=8e-6)


def a100(precision: str = "bf16") -> DeviceProfile:
    """A100 SXM 80GB: 312 TFLOP/s bf16 dense, 19.5 fp32 (156 TF32), 2.039 TB/s."""
    return _gpu("A100 SXM 80GB", 312e12, 19.5e12, 2.039e12, 80 * 10**9, 0.75,
                "NVIDIA A100 data sheet", precision)


def h100(precision: str = "bf16") -> DeviceProfile:
    """H100 SXM: 989 TFLOP/s bf16 dense, 67 fp32, 3.35 TB/s, 80 GB."""
    return _gpu("H100 SXM", 989e12, 67e12, 3.35e12, 80 * 10**9, 0.70, "NVIDIA H100 data sheet", precision)


def h200(precision: str = "bf16") -> DeviceProfile:
    """H200 SXM: 989 TFLOP/s bf16 dense, 67 fp32, 4.8 TB/s, 141 GB."""
    return _gpu("H200 SXM", 989e12, 67e12, 4.8e12, 141 * 10**9, 0.70, "NVIDIA H200 data sheet", precision)


def frontier(precision: str = "bf16") -> System:
    """Frontier node: 8 MI250X GCDs; Infinity Fabric 50 GB/s per direction between GCD pairs on
    different packages (ring bound; 200 GB/s inside a package); 4 Slingshot-11 NICs of 25 GB/s."""
    return System("frontier", mi250x_gcd(precision), 8, Link("Infinity Fabric", 10e-6, 50e9),
                  Link("Slingshot-11", 20e-6, 25e9), 4)


def dgx_a100(precision: str = "bf16") -> System:
    """DGX A100: 8 GPUs, NVLink3 300 GB/s per direction, 8 HDR InfiniBand NICs of 25 GB/s."""
    return System("dgx-a100", a100(precision), 8, Link("NVLink3", 10e-6, 300e9), Link("HDR IB", 20e-6, 25e9), 8)


def dgx_h100(precision: str = "bf16") -> System:
    """DGX H100: 8 GPUs, NVLink4 450 GB/s per direction, 8 NDR InfiniBand NICs of 50 GB/s."""
    return System("dgx-h100", h100(precision), 8, Link("NVLink4", 10e-6, 450e9), Link("NDR IB", 20e-6, 50e9), 8)


def dgx_h200(precision: str = "bf16") -> System:
    """DGX H200: as DGX H100 with H200 GPUs."""
    return System("dgx-h200", h200(precision), 8, Link("NVLink4", 10e-6, 450e9), Link("NDR IB", 20e-6, 50e9), 8)


# --------------------------------------------------------------------------- CPU profile (measured)

def cpu_profile(fit: dict[str, Any], *, name: str = "CPU core (calibrated)") -> DeviceProfile:
    """One gloo rank on one core, fp32, from `orbit.perf.calibrate`'s fitted constants."""
    rate = lambda d, key: Rate(d["c0_s"], d[key])  # noqa: E731
    return DeviceProfile(
        name=name, precision="fp32", peak_flops=max(d["rate_flops"] for d in fit["gemm"].values()),
        memory_bytes=0, hbm_bytes_per_s=math.inf,
        gemm={k: rate(d, "rate_flops") for k, d in fit["gemm"].items()},
        attention={k: rate(d, "rate_flops") for k, d in fit["sdpa"].items()},
        elementwise={k: rate(d, "bytes_per_s") for k, d in fit["elementwise"].items()},
        op_overhead_s=fit["op_overhead_s"], dtensor_op_overhead_s=fit["dtensor_op_overhead_s"],
        inplace_op_s=fit["inplace_op_s"], dtensor_inplace_op_s=fit["dtensor_inplace_op_s"],
        overlap_comm=False, source="micro-measurements (orbit.perf.calibrate)",
        gemm_table={kind: tuple((m, k, n, 2 * m * k * n / t) for m, k, n, t in rows)
                    for kind, rows in fit["gemm_table"].items()} if "gemm_table" in fit else None,
        fsdp_unit_s=fit.get("fsdp_unit_s"),
        assumptions=("collectives share the rank's core with compute: no overlap",))


def cpu_system(fit: dict[str, Any], ranks_per_node: int = 2) -> System:
    """This machine: every rank on one node, gloo over loopback, per-collective α-β measured on 2
    ranks (α per ring step: an all-reduce of 2 ranks is 2 steps, the others 1). With more than one
    rank, the compute constants measured with both ranks busy ("concurrent") where the fit has them."""
    if ranks_per_node > 1 and "concurrent" in fit:
        fit = {**fit, **fit["concurrent"]}
    per_op = {op: (d["alpha_s"] / (2 if op == "all_reduce" else 1), d["beta_bytes_per_s"])
              for op, d in fit["collectives"].items()}
    loop = Link("gloo loopback", per_op["all_gather"][0], per_op["all_gather"][1], per_op)
    return System("cpu", cpu_profile(fit), ranks_per_node, loop, loop, 1)


def load_cpu_fit(path: str | Path) -> dict[str, Any]:
    """The "fit" section of a calibration JSON written by `orbit bench --calibrate`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no CPU calibration at {path}; run `orbit bench --calibrate` first")
    data = json.loads(path.read_text())
    return data["fit"] if "fit" in data else data


SYSTEMS = {"frontier": frontier, "dgx-a100": dgx_a100, "dgx-h100": dgx_h100, "dgx-h200": dgx_h200}


def get_system(name: str, precision: str = "bf16") -> System:
    """A named GPU system ("frontier", "dgx-a100", "dgx-h100", "dgx-h200") for `precision`."""
    if name not in SYSTEMS:
        raise ValueError(f"unknown system {name!r}; valid: {sorted(SYSTEMS)}")
    return SYSTEMS[name](precision)


def with_device(system: System, **changes: Any) -> System:
    """`system` with some device fields replaced (e.g. a GEMM efficiency measured by gpu_step.py)."""
    return replace(system, device=replace(system.device, **changes))
