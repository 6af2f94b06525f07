"""The land-calibration benchmark: every number of benchmarks/results/dbuq_*.md, through the `orbit` CLI.

    nice python benchmarks/dbuq.py --work runs/dbuq-bench --jobs 3        # ~40 min on 2 busy CPU cores

Stage 1 (in parallel, `--jobs` processes): DBUQ on linear_gaussian and ELM Ozark at each label setting of
`T_END_GRID` (the one reported chosen on the validation runs' coverage), on nonlinear at its config's setting, the
ELM emulator (the MCMC surrogate), and the emulator learning curves (PCA vs direct, `--seeds` seeds per size).
Stage 2: `orbit dbuq verify` (analytic posterior; long emcee on the exact model) and `orbit dbuq compare`
(DBUQ vs surrogate + MCMC vs NPE on the held-out ELM runs, amortization).
Everything runs on the CPU (CUDA hidden) so that all costs are in one currency: one process, OMP threads 1.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Early ODE end points searched per problem: the blur they add (labels.py) offsets the network's shrinkage
T_END_GRID = (0.01, 0.05, 0.1, 0.2, 0.4)
VARIANTS = {f"t_end_{t}": [f"options.ode_t_end={t}"] for t in T_END_GRID}
LC_SIZES = [10, 20, 50, 100, 200, 800]


def run(cmd: list[str], log: Path, done_marker: Path | None = None) -> None:
    """Run one `orbit` command; skipped when `done_marker` exists (a rerun continues where it stopped)."""
    if done_marker is not None and done_marker.exists():
        print(f"skip (done): orbit {' '.join(cmd)}", flush=True)
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    start = time.time()
    with open(log, "w") as handle:
        done = subprocess.run([sys.executable, "-m", "orbit", *cmd], cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
                              env=env)
    print(f"[{time.time() - start:6.0f} s] rc={done.returncode} orbit {' '.join(cmd)}", flush=True)
    if done.returncode:
        raise RuntimeError(f"failed: orbit {' '.join(cmd)} (log {log})")


def stage1(work: Path, seeds: int) -> list[tuple[list[str], Path, Path]]:
    def train(command: str, config: str, name: str, *overrides: str):
        return ([*command.split(), "--config", f"configs/plugins/dbuq/{config}.yaml", "--run-dir", str(work / name),
                 *overrides], work / f"{name}.log", work / name / "summary.json")

    jobs = [train("dbuq train", "nonlinear", "nl"), train("train", "emulator_elm_ozark", "emu")]
    for problem, config in (("lg", "linear_gaussian"), ("elm", "elm_ozark")):
        jobs += [train("dbuq train", config, f"{problem}_{name}", *overrides) for name, overrides in VARIANTS.items()]
    for reduce in ("pca", "none"):  # each seed its own training runs and initialization
        out = work / f"lc_{reduce}"
        jobs.append((["dbuq", "emulate", "--config", "configs/plugins/dbuq/emulator_elm_ozark.yaml", "--reduce", reduce,
                      "--sizes", *map(str, LC_SIZES), "--seeds", str(seeds), "--resample-runs", "--out", str(out),
                      "train.max_steps=1500", "train.ckpt_every=1500"], out.with_suffix(".log"),
                     out / "learning_curve.json"))
    return jobs


def choose(work: Path, problem: str) -> tuple[str, list[dict]]:
    """The variant whose validation coverage is closest to nominal (|c50 - 0.5| + |c90 - 0.9|)."""
    rows = []
    for name in VARIANTS:
        sc = json.loads((work / f"{problem}_{name}" / "summary.json").read_text())["scalars"]
        rows.append({"variant": name, **{k: sc[k] for k in sc if k.startswith(("val_", "test_")) or k == "label_seconds"}})
    best = min(rows, key=lambda r: abs(r["val_coverage_50"] - 0.5) + abs(r["val_coverage_90"] - 0.9))
    return best["variant"], rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("runs/dbuq-bench"))
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=2, help="learning-curve seeds per size")
    parser.add_argument("--mcmc-cases", type=int, default=20)
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda job: run(*job), stage1(work, args.seeds)))
    chosen = {problem: choose(work, problem) for problem in ("lg", "elm")}
    (work / "variants.json").write_text(json.dumps(chosen, indent=1))
    lg, best = (f"{problem}_{chosen[problem][0]}" for problem in ("lg", "elm"))
    stage2 = [(["dbuq", "verify", "--run-dir", str(work / lg)], work / "verify_lg.log",
               work / lg / "verify" / "verify.json"),
              (["dbuq", "verify", "--run-dir", str(work / "nl"), "--mcmc-cases", str(args.mcmc_cases)],
               work / "verify_nl.log", work / "nl" / "verify" / "verify.json"),
              (["dbuq", "compare", "--dbuq", str(work / best), "--emulator", str(work / "emu"), "--out",
                str(work / "compare"), "--mcmc-cases", str(args.mcmc_cases), "--mcmc-steps", "40000"],
               work / "compare.log", work / "compare" / "compare.json")]
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda job: run(*job), stage2))
    write_results(work, args.results, chosen, args.seeds)
    return 0


def variant_table(chosen: tuple[str, list[dict]]) -> list[str]:
    best, variants = chosen
    lines = [f"Label settings tried (the validation runs choose; chosen: {best}):", "",
             "| variant | val coverage 50% | val coverage 90% | val SBC min p | test coverage 50% | test coverage 90% | "
             "label s |", "|---|---|---|---|---|---|---|"]
    for v in variants:
        lines.append(f"| {v['variant']} | {v['val_coverage_50']:.2f} | {v['val_coverage_90']:.2f} | "
                     f"{v['val_sbc_min_pvalue']:.3g} | {v['test_coverage_50']:.2f} | {v['test_coverage_90']:.2f} | "
                     f"{v['label_seconds']:.0f} |")
    return lines


def write_results(work: Path, results: Path, chosen: dict[str, tuple[str, list[dict]]], seeds: int) -> None:
    from orbit.plugins.dbuq.compare import markdown as compare_md
    from orbit.plugins.dbuq.learning_curve import markdown as lc_md, plot as lc_plot
    from orbit.plugins.dbuq.verify import markdown as verify_md

    cmd = "nice python benchmarks/dbuq.py --work runs/dbuq-bench --jobs 3"
    head = f"Measured with `{cmd}` on a 2-core CPU VM shared with other jobs (CPU only, 1 thread per process).\n\n"
    lg = json.loads((work / f"lg_{chosen['lg'][0]}" / "verify" / "verify.json").read_text())
    nl = json.loads((work / "nl" / "verify" / "verify.json").read_text())
    (results / "dbuq_verification.md").write_text(
        "## DBUQ against exact answers\n\n" + head + "linear_gaussian: " + "\n".join(variant_table(chosen["lg"])) +
        "\n\n" + verify_md(lg) + "\n\n" + verify_md(nl) + "\n")
    cmp = json.loads((work / "compare" / "compare.json").read_text())
    lines = ["## DBUQ on ELM Ozark: vs surrogate + MCMC and NPE\n", head, *variant_table(chosen["elm"])]
    emu = json.loads((work / "emu" / "summary.json").read_text())["scalars"]
    lines += ["", f"Surrogate (land_emulator, PCA, 800 runs): test R2 {emu['test_r2']:.4f}, relative RMSE "
                  f"{emu['test_rel_rmse']:.4f}.", "", compare_md(cmp)]
    (results / "dbuq_elm_ozark.md").write_text("\n".join(lines) + "\n")
    rows = [row for reduce in ("pca", "none")
            for row in json.loads((work / f"lc_{reduce}" / "learning_curve.json").read_text())]
    (results / "dbuq_emulator.md").write_text(
        "## Land emulator learning curves on ELM Ozark (PCA-reduced vs direct)\n\n" + head +
        f"Mean ± std over {seeds} seeds (each its own training runs); validation = runs 800-899, test = runs "
        "900-999; 1500 steps each.\n\n" +
        lc_md(rows) + "\n")
    lc_plot(rows, results / "dbuq_learning_curve.png")
    for name in ("corner_case0.png", "predictive_case0.png"):
        shutil.copy(work / "compare" / name, results / f"dbuq_{name}")
    print(f"wrote {results}/dbuq_verification.md, dbuq_elm_ozark.md, dbuq_emulator.md and figures")


if __name__ == "__main__":
    sys.exit(main())
