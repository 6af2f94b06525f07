"""Model-step benchmark: OrbitViT (fused and unfused front end) vs the ClimaX-style reference.

For each config: check the three compute the same outputs (same weights), then measure one
training step (forward + backward of a mean-square loss, no optimizer) per variant:
  * step time: best of --steps timed steps after one warm-up step, as wall seconds and as CPU
    seconds of the process (time.process_time). On a shared machine wall time is inflated by
    other jobs (the load average is recorded); CPU time is not, and with OMP_NUM_THREADS=1 it
    equals wall time on an idle machine, so rates and ratios are computed from CPU time;
  * peak step memory: rise of the process's peak RSS (Linux /proc VmHWM, reset through
    /proc/self/clear_refs) over the RSS before the first step, so it counts gradients +
    activations + temporaries. Measured in its own fresh process started with
    MALLOC_MMAP_THRESHOLD_=65536 so large freed blocks go back to the OS and RSS tracks live
    memory (tracemalloc cannot see torch's CPU allocations); timing runs in another process;
  * achieved GFLOP/s: the variant's analytic training FLOPs (orbit.models.flops, 3 x forward;
    the reference counts as the unfused formula) / step CPU time, compared with the peak of a
    2048^2 fp32 GEMM measured the same way (per CPU-second) on this machine.
Writes benchmarks/results/model_step.md and prints it.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/model_step.py
"""
from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path

import torch

from orbit.models import OrbitConfig, OrbitViT, forward_flops, get_config
from orbit.models.presets import ORBIT_VARIABLES
from orbit.models.reference import ReferenceClimaX, load_from_orbit

VARIANTS = ("orbit-fused", "orbit-unfused", "reference")
RESULTS = Path(__file__).parent / "results" / "model_step.md"


def benchmark_configs() -> dict[str, tuple[OrbitConfig, int]]:
    """name -> (config, batch size)."""
    wide = OrbitConfig(variables=ORBIT_VARIABLES, img_size=(64, 128), patch_size=4, embed_dim=1024, depth=2,
                       num_heads=16, qk_norm=True, name="91var-d1024")
    return {"tiny": (get_config("tiny"), 8), "91var-d1024": (wide, 1)}


def build(config: OrbitConfig, variant: str, seed: int = 0) -> torch.nn.Module:
    """Same weights for every variant (seeded OrbitViT, copied into the reference)."""
    torch.manual_seed(seed)
    orbit = OrbitViT(dataclasses.replace(config, fused_frontend=variant == "orbit-fused"))
    if variant == "reference":
        return load_from_orbit(ReferenceClimaX(orbit.config), orbit)
    return orbit


def make_inputs(config: OrbitConfig, batch: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    V = len(config.variables)
    x = torch.randn(batch, V, *config.img_size, generator=gen)
    mask = torch.ones(batch, V, dtype=torch.bool)
    mask[0, -1] = False  # exercise the masking path
    return x, torch.arange(V), torch.full((batch,), 24.0), mask


def _status_kib(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _train_step(model, inputs) -> None:
    model(*inputs).square().mean().backward()


def measure_time(config: OrbitConfig, variant: str, batch: int, steps: int, queue) -> None:
    """Fresh process: best (wall, CPU) seconds of `steps` training steps after a warm-up."""
    model, inputs = build(config, variant), make_inputs(config, batch)
    _train_step(model, inputs)  # warm-up (allocator, oneDNN primitives)
    times = []
    for _ in range(steps):
        model.zero_grad(set_to_none=False)
        times.append(_timed(lambda: _train_step(model, inputs)))
    queue.put(tuple(min(t) for t in zip(*times)))


def measure_memory(config: OrbitConfig, variant: str, batch: int, queue) -> None:
    """Fresh process (started with MALLOC_MMAP_THRESHOLD_): MiB of peak RSS rise during the first
    step (which also allocates the gradients)."""
    model, inputs = build(config, variant), make_inputs(config, batch)
    rss_before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    _train_step(model, inputs)
    queue.put((_status_kib("VmHWM") - rss_before) / 1024)


def gemm_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best_cpu = min(_timed(lambda: a @ b)[1] for _ in range(repeats))
    return 2 * n**3 / best_cpu / 1e9


def _timed(fn) -> tuple[float, float]:
    """(wall, CPU) seconds of fn()."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def max_rel_diff(config: OrbitConfig) -> dict[str, float]:
    """max |y - y_ref| / max |y_ref| of each variant against the reference, on one sample."""
    inputs = make_inputs(config, batch=1)
    with torch.no_grad():
        ref = build(config, "reference").eval()(*inputs)
        return {v: ((build(config, v).eval()(*inputs) - ref).abs().max() / ref.abs().max()).item()
                for v in VARIANTS[:2]}


def _in_fresh_process(target, *args, env: dict[str, str] | None = None):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    saved = dict(os.environ)
    os.environ.update(env or {})  # a spawned child copies the environment at start
    try:
        proc = ctx.Process(target=target, args=(*args, queue))
        proc.start()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    result = queue.get()
    proc.join()
    return result


def run_variant(config, variant, batch, steps) -> dict:
    """Timing and memory in separate processes: forcing mmap for large blocks (needed for RSS to
    track live memory) slows steps down with page faults, so it is only used for memory."""
    wall_s, cpu_s = _in_fresh_process(measure_time, config, variant, batch, steps)
    return {
        "wall_s": wall_s,
        "cpu_s": cpu_s,
        "peak_mib": _in_fresh_process(measure_memory, config, variant, batch, env={"MALLOC_MMAP_THRESHOLD_": "65536"}),
    }


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(benchmark_configs()), choices=list(benchmark_configs()))
    parser.add_argument("--steps", type=int, default=2, help="timed steps per variant (best reported)")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    peak = gemm_peak_gflops()
    lines = [
        "# Model step: OrbitViT vs ClimaX-style reference (fp32, CPU)",
        "",
        f"- machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, Python {platform.python_version()}",
        f"- command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')} python benchmarks/model_step.py "
        f"{' '.join(argv if argv is not None else sys.argv[1:])}`",
        f"- fp32 GEMM peak (2048^2 matmul, best of 5, per CPU-second): {peak:.1f} GFLOP/s",
        "- step = forward + backward of a mean-square loss; times = best of "
        f"{args.steps} steps after a warm-up (wall, and CPU seconds of the process: the ratios and "
        "rates use CPU time, which other jobs on a shared machine do not inflate); memory = peak RSS "
        "rise during the first step (gradients + activations); a fresh process per measurement; "
        "GFLOP/s from analytic training FLOPs (3 x forward) per CPU-second.",
        "",
        "| config | batch | variant | max rel diff vs ref | step wall s | step CPU s | speed-up vs ref | "
        "peak step MiB | memory vs ref | train GFLOP/step | GFLOP/s | % of GEMM peak |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in args.configs:
        config, batch = benchmark_configs()[name]
        diffs = max_rel_diff(config)
        results = {v: run_variant(config, v, batch, args.steps) for v in VARIANTS}
        ref = results["reference"]
        for variant, res in results.items():
            fused = variant == "orbit-fused"
            flop_config = dataclasses.replace(config, fused_frontend=fused)
            gflop = 3 * forward_flops(flop_config, batch_size=batch)["total"] / 1e9
            rate = gflop / res["cpu_s"]
            diff = f"{diffs[variant]:.1e}" if variant in diffs else "-"
            lines.append(
                f"| {name} | {batch} | {variant} | {diff} | {res['wall_s']:.3f} | {res['cpu_s']:.3f} | "
                f"{ref['cpu_s'] / res['cpu_s']:.2f}x | {res['peak_mib']:.0f} | "
                f"{res['peak_mib'] / ref['peak_mib']:.2f} | {gflop:.1f} | {rate:.1f} | {100 * rate / peak:.0f}% |"
            )
    lines += ["", f"Load average (1 min) before/after: {load_before:.2f} / {os.getloadavg()[0]:.2f} "
              f"on {os.cpu_count()} CPUs (other jobs share this machine when it is above ~0)."]
    table = "\n".join(lines) + "\n"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(table)
    print(table)
    return table


if __name__ == "__main__":
    main()
