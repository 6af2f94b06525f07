"""Predicted beside measured: the time model on the scaling benchmark's cases, with this CPU's
calibrated profile (`orbit bench --predict`), and on `benchmarks/gpu_step.py`'s one-device steps
with a GPU profile.

A case of N ranks runs on one node of N ranks (gloo over loopback). Only cases that do not
oversubscribe the cores (N <= CPUs) are judged: beyond that the measured time is time-sharing.
Error = predicted / measured - 1 against the fastest timed step (the least disturbed by other load,
as the calibration's compute minima are; its collectives are loop means, which every step pays);
the aim is |error| <= 25%. The median step is shown beside it.
A second check that other processes on the machine disturb less: the CPU time one rank is busy
(measured `process_time`) against the predicted compute + recompute + optimizer + exposed
communication (gloo moves the bytes and polls for its peer on the rank's own core: between
computations a collective's CPU time is 50-75% of its wall time here, so this is an upper bound);
only the pipeline bubble is idle.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from orbit.models.registry import get_config
from orbit.perf.benchmark import SIZES, Case, Result
from orbit.perf.devices import Rate, System, cpu_system
from orbit.perf.plan import Layout
from orbit.perf.timemodel import StepTime, predict

TARGET = 0.25


def case_layout(c: Case) -> Layout:
    """The plan's `Layout` of a benchmark case (fsdp engine, its pipeline settings)."""
    dims, parallel = c.dims, c.parallel
    microbatches = (parallel.pp_microbatches or dims.pp * parallel.pp_stages_per_rank) if dims.pp > 1 else 1
    return Layout(**dims.degrees, pp_microbatches=microbatches, pp_stages_per_rank=parallel.pp_stages_per_rank,
                  pp_schedule=parallel.pp_schedule, activation_checkpointing=False)


def predict_case(c: Case, fit: dict[str, Any]) -> StepTime:
    """The time model's step for case `c` on this CPU (`fit` from `calibrate`), its ranks on one node."""
    node = cpu_system(fit, c.world_size)
    config = SIZES[c.size].build().config
    return predict(config, case_layout(c), node, 1, batch_size=c.global_batch // c.dims.dp, precision="fp32")


def busy(step: StepTime) -> float:
    """Predicted seconds one rank's core works: all of the step but the pipeline bubble (module doc)."""
    return step.step_s - step.bubble_s


def judged(c: Case) -> bool:
    return c.world_size <= (os.cpu_count() or 1)


def compare(results: list[Result], fit: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per result: measured and predicted step, error, the predicted breakdown."""
    rows = []
    for r in results:
        step = predict_case(r.case, fit)
        rows.append({"size": r.case.size, "ranks": r.case.world_size, "layout": r.case.label,
                     "global_batch": r.case.global_batch, "measured_s": r.step_min_s, "measured_median_s": r.step_s,
                     "measured_cpu_s_per_rank": r.cpu_s_per_rank, "predicted": step.as_dict(),
                     "error": step.step_s / r.step_min_s - 1, "judged": judged(r.case),
                     "predicted_busy_s": busy(step), "busy_error": busy(step) / r.cpu_s_per_rank - 1})
    return rows


def summary_line(rows: list[dict[str, Any]]) -> str:
    """How many judged layouts meet the ±25% aim, and the worst error."""
    judged_rows = [row for row in rows if row["judged"]]
    if not judged_rows:
        return "no layout within the core count to judge"
    ok = sum(abs(row["error"]) <= TARGET for row in judged_rows)
    worst = max(judged_rows, key=lambda row: abs(row["error"]))
    mean_abs = sum(abs(row["error"]) for row in judged_rows) / len(judged_rows)
    busy_ok = sum(abs(row["busy_error"]) <= TARGET for row in judged_rows)
    return (f"step time: {ok} of {len(judged_rows)} layouts of <= {os.cpu_count()} ranks within ±{TARGET:.0%}; mean "
            f"|error| {mean_abs:.0%}; worst {worst['size']} {worst['layout']} {worst['error']:+.0%}. CPU-busy time "
            f"per rank: {busy_ok} of {len(judged_rows)} within ±{TARGET:.0%}")


def prediction_table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown: measured, predicted, error and the predicted terms (ms)."""
    terms = sorted({k for row in rows for k, v in row["predicted"]["breakdown_s"].items() if v > 0},
                   key=lambda k: (k.startswith("comm"), k))
    head = " | ".join(f"{t} ms" for t in terms)
    lines = [f"| model | ranks | layout | measured s (fastest) | median s | predicted s | error | within ±25% | "
             f"CPU s/rank | predicted busy s | error | {head} |",
             "|---|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(terms)]
    for row in rows:
        parts = " | ".join(f"{1e3 * row['predicted']['breakdown_s'].get(t, 0.0):.1f}" for t in terms)
        verdict = ("yes" if abs(row["error"]) <= TARGET else "**no**") if row["judged"] else "n/a (oversubscribed)"
        lines.append(f"| {row['size']} | {row['ranks']} | {row['layout']} | {row['measured_s']:.3f} | "
                     f"{row['measured_median_s']:.3f} | "
                     f"{row['predicted']['step_s']:.3f} | {row['error']:+.0%} | {verdict} | "
                     f"{row['measured_cpu_s_per_rank']:.3f} | {row['predicted_busy_s']:.3f} | {row['busy_error']:+.0%} | "
                     f"{parts} |")
    return lines


def gpu_rows(measured: dict[str, Any], system: System) -> list[dict[str, Any]]:
    """`benchmarks/gpu_step.py`'s one-device steps beside the profile's prediction, the profile as
    specified and with its GEMM, attention and copy rates replaced by the ones gpu_step measured."""
    k = measured["kernels"]
    device = system.device
    kernels = dataclasses.replace(
        device, gemm={kind: Rate(r.c0_s, k["gemm_flops"]) for kind, r in device.gemm.items()},
        attention={"forward": Rate(device.attention["forward"].c0_s, k["attention_forward_flops"]),
                   "forward_backward": Rate(device.attention["forward_backward"].c0_s,
                                            k["attention_forward_backward_flops"])},
        elementwise={kind: Rate(r.c0_s, 0.8 * k["copy_bytes_per_s"]) for kind, r in device.elementwise.items()})
    one = dataclasses.replace(system, gpus_per_node=1)
    rows = []
    for r in measured["steps"]:
        config = get_config(r["preset"], depth=r["depth"])
        layout = Layout(1, 1, 1, 1, 1, activation_checkpointing=r["activation_checkpointing"])
        spec = predict(config, layout, one, 1, batch_size=r["batch"], precision="bf16")
        kern = predict(config, layout, dataclasses.replace(one, device=kernels), 1, batch_size=r["batch"],
                       precision="bf16")
        rows.append({**r, "predicted_spec_s": spec.step_s, "predicted_kernels_s": kern.step_s,
                     "error_spec": spec.step_s / r["step_s"] - 1, "error_kernels": kern.step_s / r["step_s"] - 1})
    return rows


def gpu_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| case | batch | compile | AC | measured s | MFU | predicted s (spec profile) | error | "
             "predicted s (measured kernel rates) | error |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['batch']} | {'on' if r['compile'] else 'off'} | "
                     f"{'on' if r['activation_checkpointing'] else 'off'} | {r['step_s']:.4f} | {r['mfu']:.1%} | "
                     f"{r['predicted_spec_s']:.4f} | {r['error_spec']:+.0%} | {r['predicted_kernels_s']:.4f} | "
                     f"{r['error_kernels']:+.0%} |")
    return lines
