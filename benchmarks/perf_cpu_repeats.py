"""The CPU check of the time model, repeated: `orbit bench --world-sizes 1 2 --predict` run N times
(each calibrating afresh), then the error of every 1-2 rank layout per run and its median over runs.

Why: on this 2-core VM one run's error moves by 10-30 points from run to run (the host's load is
invisible from inside: no steal time is reported), so a single run can pass or fail the ±25% aim by
luck. The last run's report is written to `--final` (the committed perf_cpu_validation.*).

    OMP_NUM_THREADS=1 python benchmarks/perf_cpu_repeats.py --runs 5 --work runs/perf-repeats \
        --final benchmarks/results/perf_cpu_validation --out benchmarks/results/perf_cpu_repeats.md
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

TARGET = 0.25


def run_once(out: Path, steps: int) -> list[dict]:
    cmd = [sys.executable, "-m", "orbit.cli", "bench", "--world-sizes", "1", "2", "--steps", str(steps),
           "--predict", "--out", str(out)]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL)
    rows = json.loads(out.with_suffix(".json").read_text())["predicted"]
    return [r for r in rows if r["judged"]]


def table(runs: list[list[dict]]) -> list[str]:
    keys = list(dict.fromkeys((r["size"], r["layout"]) for r in runs[0]))
    error = {(r["size"], r["layout"], i): r["error"] for i, rows in enumerate(runs) for r in rows}
    lines = ["| model | layout | " + " | ".join(f"run {i + 1}" for i in range(len(runs))) + " | median | within ±25% |",
             "|---|---|" + "---|" * len(runs) + "---|---|"]
    inside = 0
    for size, layout in keys:
        errors = [error[(size, layout, i)] for i in range(len(runs))]
        median = statistics.median(errors)
        inside += abs(median) <= TARGET
        cells = " | ".join(f"{e:+.0%}" for e in errors)
        lines.append(f"| {size} | {layout} | {cells} | {median:+.0%} | {'yes' if abs(median) <= TARGET else '**no**'} |")
    per_run = [sum(abs(r["error"]) <= TARGET for r in rows) for rows in runs]
    return [f"**median over {len(runs)} runs: {inside} of {len(keys)} layouts within ±25%; per run: "
            f"{', '.join(str(n) for n in per_run)} of {len(keys)}**", ""] + lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--work", default="runs/perf-repeats")
    parser.add_argument("--final", default=None, help="copy the last run's report to this path stem")
    parser.add_argument("--out", default="benchmarks/results/perf_cpu_repeats.md")
    args = parser.parse_args(argv)
    if args.runs < 1:
        raise SystemExit(f"--runs must be >= 1, got {args.runs}")
    runs, last = [], None
    for i in range(args.runs):
        last = Path(args.work) / f"run{i + 1}" / "perf_cpu_validation"
        runs.append(run_once(last, args.steps))
        print(f"run {i + 1}: {sum(abs(r['error']) <= TARGET for r in runs[-1])} of {len(runs[-1])} within ±25%", flush=True)
    if args.final:
        final = Path(args.final)
        for produced in last.parent.glob(last.name + "*"):
            shutil.copy(produced, final.parent / produced.name.replace(last.name, final.name))
    text = ["# Time model on this CPU, repeated runs", "",
            f"`{' '.join(['python', 'benchmarks/perf_cpu_repeats.py'] + (argv or sys.argv[1:]))}`: each run calibrates the "
            "CPU profile afresh (`orbit.perf.calibrate`) and measures every 1-2 rank layout "
            "(`orbit bench --world-sizes 1 2 --predict`). Error = predicted / measured (fastest timed step) - 1.", ""]
    Path(args.out).write_text("\n".join(text + table(runs)) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
