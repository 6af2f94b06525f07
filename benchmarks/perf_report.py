"""The time model at scale and on a GPU: published ORBIT / ORBIT-2 figures beside the predictions,
the planner's layout beside ORBIT's (assumed) one, predicted strong/weak scaling curves on
Frontier, and the one-device GPU steps of `benchmarks/gpu_step.py` beside the GPU profile.

    .venv/bin/python benchmarks/perf_report.py [--out-dir benchmarks/results] [--quick]

Writes perf_published.md, perf_scaling.md and perf_scaling.png (no process group, no GPU needed;
the GPU check reads benchmarks/results/gpu_step.json when it is there).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from orbit.perf.devices import frontier, get_system
from orbit.perf.published import ORBIT, ORBIT2, PAPERS, compare, node_counts, published_table
from orbit.perf.scaling import plot, strong_curve, weak_curve
from orbit.perf.validate import gpu_rows, gpu_table
from orbit.perf import published

FRONTIER_NODES = 9408
STRONG_BATCH = 4096


def _range(pair: tuple[float, float], fmt: str) -> str:
    return format(pair[0], fmt) if pair[0] == pair[1] else f"{pair[0]:{fmt}}–{pair[1]:{fmt}}"


def published_page(command: str, gpu_json: Path) -> str:
    system = frontier()
    rows = [compare(ORBIT, model, system) for model in ORBIT.models] + [compare(ORBIT2, "10b", system)]
    device = system.device
    lines = [
        "# The time model against published ORBIT figures", "",
        f"- command: `{command}`",
        f"- system: Frontier node = 8 x {device.name} ({device.peak_flops / 1e12:g} TFLOP/s bf16 dense, "
        f"{device.hbm_bytes_per_s / 1e12:g} TB/s, {device.memory_bytes / 2**30:g} GiB), {system.intra.name} "
        f"{system.intra.bytes_per_s / 1e9:g} GB/s per rank (α {system.intra.alpha_s * 1e6:g} us), "
        f"{system.nics_per_node} x {system.inter.name} {system.inter.bytes_per_s / 1e9:g} GB/s (α "
        f"{system.inter.alpha_s * 1e6:g} us); {device.source}",
        "- assumed achieved fractions (not fitted to any figure below): " + "; ".join(device.assumptions),
        "", "## Sources and assumptions", "",
        *[f"- {p.name}: {p.source}; {p.nodes:,} nodes = {p.gcds:,} GCDs; {_range(p.pflops, ',.0f')} "
          f"PFLOP/s; {p.efficiency_kind} {_range(p.efficiency, '.0%')}" for p in PAPERS],
        *[f"- {' '.join(item.split())}" for item in published.__doc__.split("\n\n")[1].split("\n- ")[1:]],
        f"- layout as ORBIT would run it (ASSUMED): {' '.join(published.orbit_layout.__doc__.split(': ', 1)[1].split())}",
        "", "## Predicted beside published", "", *published_table(rows), "",
        "PFLOP/s = model FLOPs (3 x forward, no recompute) / predicted step. The planner's layout is the "
        "fastest that fits at the same global batch (`orbit plan --search`).", "",
        "## Where the time goes (predicted seconds per step)", "",
        "| paper | model | layout | " + " | ".join(["compute", "recompute", "optimizer", "bubble", "exposed comm"]) + " |",
        "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for name, ranked in (("ORBIT-style", r.orbit), ("planner", r.best)):
            if ranked is None:
                continue
            b = ranked.step.breakdown()
            comm = ", ".join(f"{k[5:]} {v:.2f}" for k, v in b.items() if k.startswith("comm") and v >= 0.005)
            lines.append(f"| {r.paper.name} | {r.model} | {name} | {b['compute']:.2f} | {b['recompute']:.2f} | "
                         f"{b['optimizer']:.2f} | {b['bubble']:.2f} | {comm or '-'} |")
    lines += ["", "## One H200: measured step beside the H200 profile", ""]
    if gpu_json.exists():
        measured = json.loads(gpu_json.read_text())
        k = measured["kernels"]
        h200 = get_system("dgx-h200")
        lines += [f"`benchmarks/gpu_step.py` on {measured['device']} (torch {measured['torch']}): an "
                  f"8192^3 bf16 GEMM ran at {k['gemm_flops'] / 1e12:.0f} TFLOP/s "
                  f"({k['gemm_flops'] / h200.device.peak_flops:.0%} of the 989 peak; the profile assumes "
                  f"{h200.device.gemm['forward'].rate / h200.device.peak_flops:.0%}), flash attention "
                  f"{k['attention_forward_flops'] / k['gemm_flops']:.2f} (forward) and "
                  f"{k['attention_forward_backward_flops'] / k['gemm_flops']:.2f} (forward+backward) of that "
                  "GEMM rate (assumed 0.55 and 0.40), a copy "
                  f"{k['copy_bytes_per_s'] / 1e12:.2f} TB/s (assumed 0.8 x 4.8). The time model has no "
                  "compiler: it predicts eager steps; `compile on` rows fuse elementwise work it counts.", "",
                  *gpu_table(gpu_rows(measured, h200)), ""]
    else:
        lines.append(f"({gpu_json} not found: run benchmarks/gpu_step.py on a GPU)")
    return "\n".join(lines) + "\n"


def scaling_page(command: str, out_dir: Path, quick: bool) -> str:
    system = frontier()
    counts = node_counts(64 if quick else 8192) + ([] if quick else [FRONTIER_NODES])
    strong_counts = [n for n in counts if n in (1, 4, 16, 64, 256, 1024, 4096, 8192, FRONTIER_NODES)]
    models = ("115m", "1b") if quick else ORBIT.models
    curves = [weak_curve(m, system, counts) for m in models]
    curves += [strong_curve(m, system, strong_counts, STRONG_BATCH) for m in models]
    png = out_dir / "perf_scaling.png"
    plot(curves, png, gpus_per_node=system.gpus_per_node, global_batch=STRONG_BATCH)
    lines = ["# Predicted scaling on Frontier (time model)", "", f"- command: `{command}`",
             f"- plot: [{png.name}]({png.name})",
             "- weak: ORBIT-style layout (`orbit.perf.published.orbit_layout`), 2 samples per data rank, from the "
             "fewest nodes it fits on; efficiency = TFLOP/s per GCD / that at the first point",
             f"- strong: global batch {STRONG_BATCH}, the planner's fastest layout that fits at each node count; "
             "efficiency = speed-up / node ratio against the first node count that fits", ""]
    for c in curves:
        lines += [f"## {c.model}, {c.kind} scaling", "", "| nodes | GCDs | PFLOP/s | samples/s | MFU | efficiency | layout |",
                  "|---|---|---|---|---|---|---|"]
        for n, p, s, m, e, layout in zip(c.nodes, c.pflops, c.samples_per_s, c.mfu, c.efficiency(), c.layouts):
            lines.append(f"| {n:,} | {n * system.gpus_per_node:,} | {p:,.1f} | {s:,.1f} | {m:.1%} | {e:.0%} | `{layout}` |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", default="benchmarks/results", type=Path)
    parser.add_argument("--gpu-json", default="benchmarks/results/gpu_step.json", type=Path)
    parser.add_argument("--quick", action="store_true", help="115m and 1b up to 64 nodes only (tests)")
    args = parser.parse_args(argv)
    command = " ".join(["python benchmarks/perf_report.py", *(argv if argv is not None else sys.argv[1:])])
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if not args.quick:
        (args.out_dir / "perf_published.md").write_text(published_page(command, args.gpu_json))
    (args.out_dir / "perf_scaling.md").write_text(scaling_page(command, args.out_dir, args.quick))
    print(f"wrote {args.out_dir}/perf_published.md, perf_scaling.md, perf_scaling.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
