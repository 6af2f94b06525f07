"""Run the scaling sweeps and write them up: a markdown page (machine, versions, command, tables),
a PNG (strong and weak scaling, counted vs analytic bytes, per-rank state memory) and a JSON of every
case; with `predict`, the time model's step beside each measured one (`orbit.perf.validate`)."""
from __future__ import annotations

import dataclasses
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

from orbit.perf import calibrate as calibration
from orbit.perf.benchmark import Result, default_cases, device_peak, run_cases
from orbit.perf.devices import load_cpu_fit
from orbit.perf.validate import compare, prediction_table, summary_line

CAVEAT = (
    "This machine has {cpus} CPU cores and each rank runs one thread, so every run with more than "
    "{cpus} ranks oversubscribes the cores: its step times measure time-sharing of {cpus} cores by "
    "gloo processes, not scaling, and neither do MFUs (computed against one rank's single-thread "
    "peak). The byte counts per axis and the per-rank memory do not depend on the cores and are the "
    "evidence here; timings on >{cpus} ranks are kept for completeness. Other jobs were running on "
    "the machine (load average below), so all times are noisy."
)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mb(value: float | None) -> str:
    return "n/m" if value is None else f"{value:.3f}"


def _ratio(counted: float, analytic: float | None) -> str:
    if analytic is None:
        return "not modelled"
    if analytic == 0:
        return "-" if counted < 1e-3 else "analytic 0"
    return f"{counted / analytic:.3f}"


def performance_table(results: list[Result]) -> list[str]:
    lines = ["| model | ranks | layout | global batch | step s | CPU s/rank | samples/s | tokens/s | "
             "TFLOPS/rank | MFU | peak RSS MiB/rank |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        c = r.case
        lines.append(f"| {c.size} | {c.world_size} | {c.label} | {c.global_batch} | {r.step_s:.3f} | "
                     f"{r.cpu_s_per_rank:.3f} | {r.samples_per_s:.1f} | {r.tokens_per_s:.0f} | "
                     f"{r.tflops_per_rank:.4f} | {100 * r.mfu:.1f}% | {r.peak_memory_mib:.0f} |")
    return lines


def scaling_table(results: list[Result], weak: bool) -> list[str]:
    """Speed-up and efficiency against the same model and axis on one rank."""
    head = "efficiency = (samples/s) / (N x samples/s on 1 rank)" if weak else \
        "speed-up = step time on 1 rank / step time; efficiency = speed-up / N"
    lines = [f"({head})", "", "| model | layout | ranks | global batch | step s | samples/s | "
             f"{'' if weak else 'speed-up | '}efficiency |",
             f"|---|---|---|---|---|---|{'' if weak else '---|'}---|"]
    for r in results:
        c = r.case
        base = next(b for b in results if b.case.size == c.size and b.case.world_size == 1)
        speedup = base.step_s / r.step_s
        eff = r.samples_per_s / (c.world_size * base.samples_per_s) if weak else speedup / c.world_size
        middle = "" if weak else f"{speedup:.2f} | "
        lines.append(f"| {c.size} | {c.label} | {c.world_size} | {c.global_batch} | {r.step_s:.3f} | "
                     f"{r.samples_per_s:.1f} | {middle}{eff:.2f} |")
    return lines


def bytes_table(results: list[Result]) -> list[str]:
    lines = ["| model | ranks | layout | axis | calls | counted MB/rank | analytic MB/rank | counted / analytic |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for axis in sorted(set(r.counted_mb) | set(r.analytic_mb)):
            if not r.calls.get(axis) and axis not in r.analytic_mb:
                continue  # a group of this rank that carried nothing in this case
            counted = r.counted_mb.get(axis, 0.0)
            expected, ratio = ((_mb(r.analytic_mb[axis]), _ratio(counted, r.analytic_mb[axis]))
                               if axis in r.analytic_mb else ("0 (scalars only)", "-"))
            lines.append(f"| {r.case.size} | {r.case.world_size} | {r.case.label} | {axis} | {r.calls.get(axis, 0)} | "
                         f"{counted:.3f} | {expected} | {ratio} |")
    return lines


def memory_table(results: list[Result]) -> list[str]:
    lines = ["| model | ranks | layout | state MiB/rank (max) | ideal MiB/rank | measured / ideal |",
             "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.case.size} | {r.case.world_size} | {r.case.label} | {r.state_mib_per_rank:.2f} | "
                     f"{r.ideal_state_mib_per_rank:.2f} | {r.state_mib_per_rank / r.ideal_state_mib_per_rank:.3f} |")
    return lines


def summary(results: list[Result]) -> list[str]:
    """The headline numbers of the byte and memory tables, computed (not written by hand)."""
    ratios = [r.counted_mb.get(a, 0.0) / v for r in results for a, v in r.analytic_mb.items() if v]
    unmodelled = sum(1 for r in results for v in r.analytic_mb.values() if v is None)

    def state(prefix: str) -> list[float]:
        return [r.state_mib_per_rank / r.ideal_state_mib_per_rank for r in results
                if r.case.world_size > 1 and r.case.label == f"{prefix}={r.case.world_size}"]

    fsdp, tp = state("dp_shard"), state("tp")
    lines = ["## Summary", ""]
    if ratios:
        lines.append(f"- bytes per axis: counted / analytic between {min(ratios):.3f} and {max(ratios):.3f} over "
                     f"{len(ratios)} (layout, axis) pairs; {unmodelled} not modelled (FSDP under a pipeline)")
    if fsdp:
        lines.append(f"- dp_shard=N: parameters + gradients + AdamW state per rank = {min(fsdp):.3f}-{max(fsdp):.3f} "
                     "x the ideal 1/N (FSDP padding)")
    if tp:
        lines.append(f"- tp=N: {min(tp):.3f}-{max(tp):.3f} x the ideal 1/N (replicated norms, embeddings, front end "
                     "and head; the larger model is closer)")
    lines.append("- the 1-process baseline runs one thread on one core; 2 ranks use both cores, so 2-rank "
                 "speed-ups above 1 reflect the second core, not parallel efficiency")
    return lines


def prediction_section(rows: list[dict[str, Any]], note: str) -> list[str]:
    return [
        "## Predicted beside measured (time model, `orbit.perf.timemodel`)", "",
        f"CPU profile: {note}. The model never sees a step time: its constants are GEMM, attention "
        "and elementwise rates, per-op dispatch (plain and DTensor) and gloo α-β per collective, each "
        "measured alone (`orbit.perf.calibrate`). Error = predicted / measured - 1; judged only where "
        "ranks <= cores.", "", f"**{summary_line(rows)}**", "", *prediction_table(rows), ""]


def render_markdown(sweeps: dict[str, list[Result]], *, command: str, peak_note: str,
                    load: tuple[float, float], steps: int, predicted: list[str] = ()) -> str:
    cpus = os.cpu_count()
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 if hasattr(os, "sysconf") else 0
    lines = [
        "# Parallel scaling benchmark: ORBIT on the Hybrid-STOP engine (CPU, gloo, fp32)",
        "",
        f"- machine: {platform.node()}, {_cpu_model()}, {cpus} CPUs, {mem_gib:.0f} GiB RAM",
        f"- software: torch {torch.__version__}, Python {platform.python_version()}, backend gloo, "
        "1 thread per rank (OMP_NUM_THREADS=1)",
        f"- command: `{command}`",
        f"- peak for MFU: {peak_note}",
        f"- load average (1 min) before / after: {load[0]:.2f} / {load[1]:.2f}",
        "- models: the `tiny` preset's 9 variables on a 32 x 64 grid, patch 4 (L = 128 tokens), depth 4; "
        "d128 = width 128, 4 heads; d256 = width 256, 8 heads; AdamW, gradient clipping, fp32",
        f"- per case: 1 warm-up step, 1 step with collectives counted, {steps} timed steps (median of "
        "barrier-to-barrier wall time of the slowest rank); a step = forward + backward + loss "
        "average + clipping + AdamW step",
        "- TFLOPS/rank = analytic training FLOPs (3 x forward, `orbit.models.flops`) of the global batch "
        "/ step time / ranks; tokens = B x L spatial tokens; peak RSS = the rank process's peak "
        "resident memory during the case (includes the ~0.5 GiB of torch itself)",
        "",
        CAVEAT.format(cpus=cpus),
        "",
        *summary(sweeps["layouts"]),
        "",
        *predicted,
        "## Layouts at a fixed global batch",
        "",
        *performance_table(sweeps["layouts"]),
        "",
        "## Strong scaling (global batch 8)",
        "",
        *scaling_table(sweeps["strong"], weak=False),
        "",
        "## Weak scaling (2 samples per rank, dp_shard = N)",
        "",
        *scaling_table(sweeps["weak"], weak=True),
        "",
        "## Bytes sent per step on each mesh axis",
        "",
        "Counted: a pre-hook on every process group of the mesh (`orbit.perf.comm_stats`) sees each "
        "collective and point-to-point call (FSDP2's all-gathers and reduce-scatters, DTensor's and "
        "Ulysses' functional collectives, pipeline send/recv, scalar all-reduces) and adds the bytes this "
        "rank sends under a bandwidth-optimal algorithm (all-reduce 2(n-1)/n S, all-gather / "
        "reduce-scatter / all-to-all (n-1)/n S, send S). Mean over ranks, one step. Analytic: "
        "`orbit.perf.comm_model` (formulas in its docstring: FSDP all-gather in forward and backward "
        "+ reduce-scatter of the parameters; TP 2 all-reduces of activations per block forward and 4 "
        "backward (q, k, v, fc1 input gradients); Ulysses 2 all-to-alls per block each way + the band "
        "all-gather; PP one activation per microbatch per stage boundary each way). Axes that share "
        "ranks are one label (with sp = 1, FSDP's dp_shard_sp group is dp_shard). Analytic leaves out "
        "scalars (loss average, gradient norm) and FSDP padding; FSDP under a pipeline is not modelled "
        "(n/m).",
        "",
        *bytes_table(sweeps["layouts"]),
        "",
        "## Memory: parameters + gradients + AdamW state per rank",
        "",
        "Measured from the local tensors after an optimizer step (DTensor shards, FSDP shards, optimizer "
        "state), worst rank; ideal = the 1-process bytes (16 bytes per parameter) / the number of ranks "
        "that split the state (all but dp_replicate). Tensor parallel leaves norms, embeddings, the front "
        "end and the head replicated, and a pipeline's first stage also holds the front end, so those "
        "layouts stay above 1/N; FSDP reaches it up to padding.",
        "",
        *memory_table(sweeps["layouts"]),
        "",
    ]
    return "\n".join(lines)


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:  # a sweep of one world size draws no lines to label
        ax.legend(fontsize=8)


def plot(sweeps: dict[str, list[Result]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5))
    ax = axes[0, 0]
    for kind in ("dp_shard", "tp"):
        for size in sorted({r.case.size for r in sweeps["strong"]}):
            rows = [r for r in sweeps["strong"] if r.case.size == size
                    and (r.case.world_size == 1 or r.case.label.startswith(kind))]
            if len(rows) > 1:
                ax.plot([r.case.world_size for r in rows], [r.samples_per_s for r in rows], "o-", label=f"{size} {kind}=N")
    ax.set(title="strong scaling, global batch 8 (>2 ranks oversubscribe 2 cores)", xlabel="ranks N",
           ylabel="samples/s", xscale="log", xticks=[1, 2, 4, 8])
    _legend(ax)
    ax = axes[0, 1]
    for size in sorted({r.case.size for r in sweeps["weak"]}):
        rows = [r for r in sweeps["weak"] if r.case.size == size]
        ax.plot([r.case.world_size for r in rows], [r.step_s for r in rows], "o-", label=f"{size} dp_shard=N")
    ax.set(title="weak scaling, 2 samples per rank", xlabel="ranks N", ylabel="step time s", xscale="log",
           xticks=[1, 2, 4, 8])
    _legend(ax)
    ax = axes[1, 0]
    points = [(r.analytic_mb[a], r.counted_mb.get(a, 0.0), a) for r in sweeps["layouts"]
              for a in r.analytic_mb if r.analytic_mb[a]]
    for axis in sorted({p[2] for p in points}):
        xs, ys = zip(*[(p[0], p[1]) for p in points if p[2] == axis])
        ax.scatter(xs, ys, label=axis, s=18)
    if points:
        lo, hi = min(p[0] for p in points), max(p[0] for p in points)
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="counted = analytic")
    ax.set(title="bytes sent per rank per step, by axis", xlabel="analytic MB", ylabel="counted MB",
           xscale="log", yscale="log")
    _legend(ax)
    ax = axes[1, 1]
    for kind in ("dp_shard", "tp"):
        for size in sorted({r.case.size for r in sweeps["strong"]}):
            rows = [r for r in sweeps["strong"] if r.case.size == size
                    and (r.case.world_size == 1 or r.case.label.startswith(kind))]
            if len(rows) > 1:
                full = rows[0].state_mib_per_rank
                ax.plot([r.case.world_size for r in rows], [r.state_mib_per_rank / full for r in rows], "o-",
                        label=f"{size} {kind}=N")
    ns = [1, 2, 4, 8]
    ax.plot(ns, [1 / n for n in ns], "k--", lw=0.8, label="ideal 1/N")
    ax.set(title="params + grads + AdamW state per rank / 1 rank", xlabel="ranks N", ylabel="fraction",
           xscale="log", yscale="log", xticks=ns, yticks=[1 / n for n in ns])
    _legend(ax)
    for a in axes.flat:
        for axis in (a.xaxis, a.yaxis):
            axis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _calibrated(calibration_path: str | Path | None, out: Path) -> tuple[dict[str, Any], str]:
    """The CPU fit: from `calibration_path`, or measured now and saved beside the results."""
    if calibration_path is not None:
        return load_cpu_fit(calibration_path), f"calibration {calibration_path}"
    result = calibration.calibrate()
    path = calibration.save(result, out.with_name(out.name + "_cpu_profile.json"))
    load = result["load_before_after"]
    return result["fit"], f"calibrated just before the sweep ({path.name}; load {load[0]:.1f} / {load[1]:.1f})"


def _result_json(r: Result) -> dict[str, Any]:
    row = dataclasses.asdict(r)
    row["case"] = {"size": r.case.size, "world_size": r.case.world_size, "global_batch": r.case.global_batch,
                   "layout": r.case.label}
    return row


def run_scaling_benchmark(sizes: list[str], world_sizes: list[int], steps: int, out: str | Path,
                          command: str, *, predict: bool = False,
                          calibration_path: str | Path | None = None) -> tuple[Path, Path]:
    """Run the default sweeps and write `<out>.md`, `<out>.png` and `<out>.json`; returns the first two.
    With `predict`, calibrate this CPU first (or read `calibration_path`) and put the time model's
    step beside every measured layout."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fit, note = _calibrated(calibration_path, out) if predict else (None, "")
    load_before = os.getloadavg()[0]
    peak, peak_note = device_peak()
    sweeps = default_cases(sizes, world_sizes)
    everything = run_cases([c for cases in sweeps.values() for c in cases], steps, peak)
    by_case = {r.case: r for r in everything}
    results = {name: [by_case[c] for c in cases] for name, cases in sweeps.items()}
    rows = compare(results["layouts"], fit) if predict else []
    md, png = out.with_name(out.name + ".md"), out.with_name(out.name + ".png")
    load = (load_before, os.getloadavg()[0])
    md.write_text(render_markdown(results, command=command, peak_note=peak_note, load=load, steps=steps,
                                  predicted=prediction_section(rows, note) if predict else ()))
    plot(results, png)
    payload = {"command": command, "load_before_after": load, "steps": steps,
               "sweeps": {name: [_result_json(r) for r in rs] for name, rs in results.items()},
               "predicted": rows, "cpu_fit": fit}
    out.with_name(out.name + ".json").write_text(json.dumps(payload, indent=1))
    return md, png
