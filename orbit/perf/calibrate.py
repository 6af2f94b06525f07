"""Micro-measurements of this CPU that the time model's CPU profile is built from (never step times).

What is measured, one thread per rank as `orbit bench` runs (fp32):
- GEMMs `y = x W^T` (forward), `dx = dy W` (input gradient), `dW = dy^T x` (weight gradient) at a
  grid of shapes (M tokens x K in x N out), operands not in cache (as in a step); per kind a least-squares fit of
      t = c0 + F / R,   F = 2 M K N,
  gives a per-call cost c0 and an asymptotic rate R (the efficiency curve: achieved rate
  F / t = R F / (F + c0 R) rises with the GEMM's size towards R). The measured rows are kept too
  ("gemm_table"): the CPU profile times a GEMM at the rate of the nearest measured shape, since on a
  CPU the rate depends on K and N (cache blocking) more than a per-call cost can express.
- Attention: `scaled_dot_product_attention` forward and forward+backward at a grid of
  (batch x heads, L, head_dim); fit t = c0 + F / R with F = 4 B h L^2 d forward and 3 F for both.
- Elementwise ops on tensors of several sizes, per kind: "simple" (add, the AdamW-like in-place
  lerp_ / addcdiv_, memory-bound), "gelu" and "norm" (layer norm), forward + backward through
  autograd (on this CPU GELU and layer norm are compute-bound, so they get their own rate); per kind
  a fit t = c0 + bytes / W, bytes = elements x 4 x (tensors read + written: add 3, lerp_ 3,
  addcdiv_ 4; GELU and layer norm forward 2 + backward 3).
- Per-op dispatch: an autograd forward+backward chain of tiny ops, per op; the same chain on a
  replicated DTensor of a 2-rank mesh (tensor parallel runs its ops through DTensor dispatch); and
  a chain of in-place ops without autograd on a plain tensor and on a DTensor (what the optimizer
  runs on FSDP / TP parameters).
- gloo collectives on 2 spawned ranks (all-reduce, all-gather, reduce-scatter, all-to-all,
  send/recv) from 4 KiB to 16 MiB; per collective t = alpha + sent / beta (sent = bytes one rank
  sends, the convention of `comm_stats`). A collective is timed as a step issues it: in a loop where
  each call follows a short GEMM (~0.4 ms), the cost per call = the loop's mean time - the GEMM
  loop's mean time (median over repeats); not as the fastest call of an idle pair of ranks. On this
  VM the latency is heavy-tailed: a 4 KiB all-reduce takes 0.3-0.5 ms at best but 1.3-2.6 ms on
  average between computations (the waiting rank's wake-up, the ranks' jitter), and a step issues
  tens of collectives, so it pays the mean.
- FSDP's fixed cost per unit: a stack of tiny two-layer units (16 wide, so bytes do not count),
  each `fully_shard`ed as `apply_fsdp` does, over 2 ranks ("shard") and over a (2 replicas x 1
  shard) mesh ("replicate"); per unit and step = (loop mean of forward + backward - that of the
  same stack unwrapped) / (units + root). It holds the collectives' latency, the hooks, copy-in /
  copy-out and DTensor wrapping: at 4.3-4.6 ms a unit ("shard") it is about twice what the
  collectives' α alone gives here.
- The GEMM, SDPA, elementwise and dispatch measurements again on both spawned ranks at once
  ("concurrent"): with every core busy a rank computes slower than alone (shared caches, memory
  bandwidth and clocks), and the 2-rank layouts run that way.

Every compute timing is the minimum over repeats (the least disturbed by other load on the machine).
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from orbit.parallel.spawn import spawn

GEMM_SHAPES = [(m, k, n) for m in (256, 1024, 4096) for k, n in
               ((64, 64), (128, 128), (128, 512), (512, 128), (256, 256), (256, 1024), (1024, 256), (512, 512))]
SDPA_SHAPES = [(bh, L, d) for bh in (8, 32, 64) for L in (128, 512) for d in (32, 64)]
ELEMENTWISE_SIZES = (2**14, 2**16, 2**18, 2**20, 2**22)
COLLECTIVE_SIZES = tuple(2**p for p in range(12, 25, 2))  # 4 KiB .. 16 MiB payloads
COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv")
COLLECTIVE_CALLS_PER_LOOP = 10
CACHE_BYTES = 32 * 2**20  # this CPU's L3


def best_time(fn: Callable[[], Any], repeats: int, min_time_s: float = 0.005) -> float:
    """Minimum over `repeats` of the mean time of one call in a batch of calls lasting >= min_time_s."""
    fn()
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    inner = max(1, int(min_time_s / once))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - start) / inner)
    return best


def fit_affine(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares y = a + b x, weighted by 1/y^2 (relative error, so small and large sizes count
    alike); a is clamped at >= 0. Returns (a, b)."""
    w = [1.0 / (y * y) for y in ys]
    sw, sx, sy = sum(w), sum(wi * x for wi, x in zip(w, xs)), sum(wi * y for wi, y in zip(w, ys))
    sxx, sxy = sum(wi * x * x for wi, x in zip(w, xs)), sum(wi * x * y for wi, x, y in zip(w, xs, ys))
    det = sw * sxx - sx * sx
    b = (sw * sxy - sx * sy) / det
    a = (sy - b * sx) / sw
    if a < 0:  # refit through the origin
        a, b = 0.0, sxy / sxx
    return a, b


def _cycling(fn: Callable[..., Any], operands: Callable[[], tuple[torch.Tensor, ...]]) -> Callable[[], Any]:
    """`fn` on a new set of operands each call, from enough sets to fill the last-level cache: in a step
    a GEMM's weights and activations were evicted since their last use (measured on this CPU: hot
    operands make small GEMMs 3-25% faster than cold ones)."""
    first = operands()
    sets = [first] + [operands() for _ in range(max(1, CACHE_BYTES // sum(t.nbytes for t in first)))]
    count = [0]

    def call() -> Any:
        count[0] += 1
        return fn(*sets[count[0] % len(sets)])
    return call


def measure_gemms(repeats: int) -> dict[str, list[list[float]]]:
    """kind -> [[M, K, N, seconds], ...], operands cold (`_cycling`)."""
    out: dict[str, list[list[float]]] = {"forward": [], "input_grad": [], "weight_grad": []}
    for m, k, n in GEMM_SHAPES:
        operands = lambda: (torch.randn(m, k), torch.randn(n, k), torch.randn(m, n))  # noqa: E731
        out["forward"].append([m, k, n, best_time(_cycling(lambda x, w, dy: F.linear(x, w), operands), repeats)])
        out["input_grad"].append([m, k, n, best_time(_cycling(lambda x, w, dy: dy @ w, operands), repeats)])
        out["weight_grad"].append([m, k, n, best_time(_cycling(lambda x, w, dy: dy.t() @ x, operands), repeats)])
    return out


def measure_sdpa(repeats: int) -> dict[str, list[list[float]]]:
    """"forward" / "forward_backward" -> [[B*h, L, d, seconds], ...]."""
    out: dict[str, list[list[float]]] = {"forward": [], "forward_backward": []}
    for bh, L, d in SDPA_SHAPES:
        q, k, v = (torch.randn(1, bh, L, d, requires_grad=True) for _ in range(3))
        grad = torch.randn(1, bh, L, d)
        out["forward"].append([bh, L, d, best_time(lambda: F.scaled_dot_product_attention(q, k, v), repeats)])

        def both():
            F.scaled_dot_product_attention(q, k, v).backward(grad)
        out["forward_backward"].append([bh, L, d, best_time(both, repeats)])
    return out


def measure_elementwise(repeats: int) -> dict[str, list[list[float]]]:
    """kind ("simple", "gelu", "norm") -> [[bytes moved, seconds], ...] (module docstring)."""
    rows: dict[str, list[list[float]]] = {"simple": [], "gelu": [], "norm": []}
    for numel in ELEMENTWISE_SIZES:
        a, b, c = torch.randn(numel), torch.randn(numel), torch.randn(numel)
        x = torch.randn(numel // 256, 256, requires_grad=True)
        weight, bias = torch.ones(256, requires_grad=True), torch.zeros(256, requires_grad=True)
        grad = torch.randn(numel // 256, 256)
        e = 4 * numel
        rows["simple"].append([3 * e, best_time(lambda: torch.add(a, b, out=c), repeats)])
        rows["simple"].append([3 * e, best_time(lambda: c.lerp_(a, 0.1), repeats)])
        rows["simple"].append([4 * e, best_time(lambda: c.addcdiv_(a, b, value=-1e-3), repeats)])
        rows["gelu"].append([5 * e, best_time(lambda: F.gelu(x).backward(grad), repeats)])
        rows["norm"].append([5 * e, best_time(lambda: F.layer_norm(x, (256,), weight, bias).backward(grad), repeats)])
    return rows


def measure_op_overhead(repeats: int, ops: int = 200) -> float:
    """Seconds per op of an autograd forward + backward chain of tiny ops (dispatch, autograd)."""
    x = torch.randn(4, requires_grad=True)

    def chain():
        y = x
        for _ in range(ops):
            y = y * 1.0001
        y.sum().backward()
    return best_time(chain, repeats) / (2 * ops)


def _collective(op: str, numel: int, rank: int) -> Callable[[], None]:
    world = dist.get_world_size()
    a = torch.randn(numel)
    if op == "all_reduce":
        return lambda: dist.all_reduce(a)
    if op == "all_gather":
        out = torch.empty(numel * world)
        return lambda: dist.all_gather_into_tensor(out, a)
    if op == "reduce_scatter":
        out = torch.empty(numel // world)
        return lambda: dist.reduce_scatter_tensor(out, a)
    if op == "all_to_all":
        out = torch.empty(numel)
        return lambda: dist.all_to_all_single(out, a)

    def ping():  # rank 0 sends to rank 1 and back: one send per rank
        if rank == 0:
            dist.send(a, 1)
            dist.recv(a, 1)
        else:
            dist.recv(a, 0)
            dist.send(a, 0)
    return ping


def sent_per_rank(op: str, payload: int, n: int) -> float:
    """Bytes one rank sends (comm_stats convention; payload = the input, all-gather: the output)."""
    if op == "all_reduce":
        return 2 * (n - 1) / n * payload
    if op == "send_recv":
        return float(payload)
    return (n - 1) / n * payload


def _inplace_chain(x: torch.Tensor, repeats: int, ops: int = 50) -> float:
    """Seconds per in-place op without autograd (the optimizer's kind of op)."""
    def chain():
        for _ in range(ops):
            x.mul_(1.0)
    return best_time(chain, repeats) / ops


def _dtensor_op_overhead(repeats: int, ops: int = 50) -> tuple[float, float]:
    """(per op of an autograd chain, per in-place op without autograd) on a replicated DTensor."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, distribute_tensor

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    x = distribute_tensor(torch.randn(4, requires_grad=True), mesh, [Replicate()])

    def chain():
        y = x
        for _ in range(ops):
            y = y * 1.0001
        y.sum().backward()
    with torch.no_grad():  # 3x the repeats: both ranks run at once, the minimum needs more tries
        inplace = _inplace_chain(distribute_tensor(torch.randn(4), mesh, [Replicate()]), 3 * repeats)
    return best_time(chain, 3 * repeats) / (2 * ops), inplace


def _loop_mean(fn: Callable[[], Any], repeats: int) -> float:
    """Median over `repeats` of the mean time per call of a loop of calls started together on every rank."""
    loops = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        for _ in range(COLLECTIVE_CALLS_PER_LOOP):
            fn()
        loops.append((time.perf_counter() - start) / COLLECTIVE_CALLS_PER_LOOP)
    return statistics.median(loops)


def _fsdp_unit_overhead(repeats: int, units: int = 6, width: int = 16) -> dict[str, float]:
    """"shard" / "replicate" -> seconds per FSDP unit and forward + backward (module docstring)."""
    from torch import nn
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=None, reduce_dtype=torch.float32)
    x = torch.randn(4, width)
    out = {}
    for kind, shape, names in (("shard", (2,), ("dp_shard",)), ("replicate", (2, 1), ("dp_replicate", "dp_shard"))):
        mesh = init_device_mesh("cpu", shape, mesh_dim_names=names)
        stacks = [nn.Sequential(*(nn.Sequential(nn.Linear(width, width), nn.Linear(width, width))
                                  for _ in range(units))) for _ in range(2)]
        for unit in stacks[1]:
            fully_shard(unit, mesh=mesh, mp_policy=policy, reshard_after_forward=True)
        fully_shard(stacks[1], mesh=mesh, mp_policy=policy, reshard_after_forward=True)
        plain, sharded = ((lambda m=m: m(x).sum().backward()) for m in stacks)
        plain(), sharded()
        out[kind] = max(_loop_mean(sharded, repeats) - _loop_mean(plain, repeats), 0.0) / (units + 1)
    return out


def _collectives_on_rank(rank: int, world_size: int, repeats: int) -> dict[str, Any]:
    autograd, inplace = _dtensor_op_overhead(repeats)
    out: dict[str, Any] = {"dtensor_op_overhead_s": autograd, "dtensor_inplace_op_s": inplace,
                           "fsdp_unit_s": _fsdp_unit_overhead(repeats)}
    dist.barrier()
    out["concurrent"] = measure_compute(repeats)
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    compute = lambda: torch.mm(a, b)  # noqa: E731  (the compute between a step's collectives)
    compute_s = _loop_mean(compute, repeats)
    for op in COLLECTIVES:
        rows = []
        for payload in COLLECTIVE_SIZES:
            numel = payload // 4
            fn = _collective(op, numel // world_size if op == "all_gather" else numel, rank)
            fn()
            seconds = max(_loop_mean(lambda: (compute(), fn()), repeats) - compute_s, 1e-6)
            rows.append([sent_per_rank(op, payload, world_size), seconds / (2 if op == "send_recv" else 1)])
        out[op] = rows
    return out


def measure_collectives(repeats: int) -> dict[str, Any]:
    """op -> [[bytes sent per rank, seconds], ...] on 2 gloo ranks (slowest rank per size), and
    "dtensor_op_overhead_s", "dtensor_inplace_op_s", "fsdp_unit_s" (the larger of the two ranks')."""
    per_rank = spawn(_collectives_on_rank, 2, repeats, timeout_s=600)
    out: dict[str, Any] = {op: [[a[0], max(a[1], b[1])] for a, b in zip(per_rank[0][op], per_rank[1][op])]
                           for op in COLLECTIVES}
    out["concurrent"] = per_rank[0]["concurrent"]
    for key in ("dtensor_op_overhead_s", "dtensor_inplace_op_s"):
        out[key] = max(r[key] for r in per_rank)
    out["fsdp_unit_s"] = {kind: max(r["fsdp_unit_s"][kind] for r in per_rank) for kind in per_rank[0]["fsdp_unit_s"]}
    return out


def measure_compute(repeats: int) -> dict[str, Any]:
    """GEMM, SDPA and elementwise rows, dispatch per op (autograd chain) and per in-place op."""
    return {"gemm": measure_gemms(repeats), "sdpa": measure_sdpa(repeats), "elementwise": measure_elementwise(repeats),
            "op_overhead_s": measure_op_overhead(repeats), "inplace_op_s": _inplace_chain(torch.randn(4), repeats)}


def calibrate(repeats: int = 5) -> dict[str, Any]:
    """Every micro-measurement (raw) and the fitted CPU profile constants."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        load = os.getloadavg()[0]
        raw = measure_compute(repeats)
        collectives = measure_collectives(repeats)
        raw["dtensor_op_overhead_s"] = collectives.pop("dtensor_op_overhead_s")
        raw["dtensor_inplace_op_s"] = collectives.pop("dtensor_inplace_op_s")
        raw["fsdp_unit_s"] = collectives.pop("fsdp_unit_s")
        raw["concurrent"] = collectives.pop("concurrent")
        raw["collectives"] = collectives
        load_after = os.getloadavg()[0]
    finally:
        torch.set_num_threads(threads)
    return {"machine": f"{platform.node()} ({os.cpu_count()} CPUs)", "torch": torch.__version__,
            "load_before_after": [load, load_after], "repeats": repeats, "raw": raw, "fit": fit(raw)}


def fit(raw: dict[str, Any]) -> dict[str, Any]:
    """Fitted constants (module docstring) from raw micro-measurements; "concurrent" holds the
    compute constants measured with both ranks busy, where they were measured."""
    coll = {}
    for op, rows in raw["collectives"].items():
        alpha, inv_beta = fit_affine([s for s, _ in rows], [t for _, t in rows])
        coll[op] = {"alpha_s": alpha, "beta_bytes_per_s": 1 / inv_beta}
    out = {**fit_compute(raw), "dtensor_op_overhead_s": raw["dtensor_op_overhead_s"],
           "dtensor_inplace_op_s": raw["dtensor_inplace_op_s"], "collectives": coll}
    if "fsdp_unit_s" in raw:
        out["fsdp_unit_s"] = raw["fsdp_unit_s"]
    if "concurrent" in raw:
        out["concurrent"] = fit_compute(raw["concurrent"])
    return out


def fit_compute(raw: dict[str, Any]) -> dict[str, Any]:
    """GEMM, SDPA, elementwise fits and the dispatch costs of one set of compute measurements."""
    gemm = {}
    for kind, rows in raw["gemm"].items():
        c0, inv_rate = fit_affine([2 * m * k * n for m, k, n, _ in rows], [t for *_, t in rows])
        gemm[kind] = {"c0_s": c0, "rate_flops": 1 / inv_rate}
    sdpa = {}
    for kind, rows in raw["sdpa"].items():
        mult = 1 if kind == "forward" else 3
        c0, inv_rate = fit_affine([mult * 4 * bh * L * L * d for bh, L, d, _ in rows], [t for *_, t in rows])
        sdpa[kind] = {"c0_s": c0, "rate_flops": 1 / inv_rate}
    elementwise = {}
    for kind, rows in raw["elementwise"].items():
        c0, inv_bw = fit_affine([b for b, _ in rows], [t for _, t in rows])
        elementwise[kind] = {"c0_s": c0, "bytes_per_s": 1 / inv_bw}
    return {"gemm": gemm, "gemm_table": raw["gemm"], "sdpa": sdpa, "elementwise": elementwise,
            "op_overhead_s": raw["op_overhead_s"], "inplace_op_s": raw["inplace_op_s"]}


def save(result: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return path
