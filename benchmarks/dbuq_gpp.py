"""Emulators with output dimension reduction on the toy land model's GPP ensemble (issue 11, the seed's TEM case):
does a PCA-reduced emulator trained on ~20 runs match a direct one (a 41,370-wide output layer) trained on ~200?

    nice python benchmarks/dbuq_gpp.py --work runs/dbuq-gpp          # ~20 min on 2 busy CPU cores

1. `orbit dbuq ensemble --runs 300`: 8 parameters -> annual GPP of 1379 cells x 30 years (skipped if present).
   Runs 0-199 train, 200-249 validate, 250-299 test (configs/plugins/dbuq/emulator_toy_gpp.yaml).
2. Same tuning budget for both: hidden size x lr (and, for PCA, the explained variance) on 50 training runs,
   chosen by the validation runs' relative RMSE; training steps by early stopping on the same runs
   (train.select_best). The test runs are never looked at for a choice.
3. `orbit dbuq emulate`: learning curves at 10, 20, 50, 100, 200 training runs, `--seeds` seeds, each seed its
   own random subset of the training runs (--resample-runs) and its own initialization.
Results: benchmarks/results/dbuq_gpp.md (+ .json) and dbuq_gpp_learning_curve.png.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

from dbuq import REPO, run  # benchmarks/dbuq.py: one `orbit` command per call, skipped when done

CONFIG = "configs/plugins/dbuq/emulator_toy_gpp.yaml"
SIZES = [10, 20, 50, 100, 200]
SEARCH_RUNS = 50
HIDDEN = ["[64,64]", "[128,128]"]
LRS = ["1.0e-3", "3.0e-3"]
EXPLAINED = ["0.99", "0.999"]


def search_grid(reduce: str) -> list[list[str]]:
    variance = EXPLAINED if reduce == "pca" else [None]
    return [[f"model.hidden={h}", f"train.lr={lr}", *([f"model.explained_variance={ev}"] if ev else [])]
            for h, lr, ev in itertools.product(HIDDEN, LRS, variance)]


def search(work: Path, store: Path, reduce: str) -> tuple[list[str], list[dict]]:
    rows = []
    for i, overrides in enumerate(search_grid(reduce)):
        run_dir = work / f"search_{reduce}_{i}"
        run(["train", "--config", CONFIG, "--run-dir", str(run_dir), f"data.path={store}", f"model.reduce={reduce}",
             f"data.n_train={SEARCH_RUNS}", *overrides], work / f"search_{reduce}_{i}.log", run_dir / "summary.json")
        sc = json.loads((run_dir / "summary.json").read_text())["scalars"]
        rows.append({"reduce": reduce, "overrides": overrides, "val_r2": sc["val_r2"],
                     "val_rel_rmse": sc["val_rel_rmse"], "components": int(sc["components"])})
    best = min(rows, key=lambda r: r["val_rel_rmse"])
    return best["overrides"], rows


def pca_floor(store: Path, sizes: list[int], seeds: int, explained: float) -> dict[int, float]:
    """Test relative RMSE of the PCA reconstruction alone (the test runs' outputs projected on the training runs'
    components, as the emulator's decoder keeps them): the error no network on the scores can go below."""
    import numpy as np

    from orbit.plugins.dbuq.emulator import Standardizer, pca_decoder
    from orbit.plugins.dbuq.gpp_ensemble import load_toy_gpp

    p = load_toy_gpp(store, 1.0)
    train, _, test = p.split(0.16667, 0.16667)
    floors = {}
    for n in sizes:
        errors = []
        for seed in range(seeds):  # the emulator's data.subset_seed draw
            rows = np.sort(np.random.default_rng([seed, 404]).permutation(train)[:n])
            std = Standardizer(p.x[rows], p.y[rows])
            components, center = pca_decoder((p.y[rows] - std.y_mean) / std.y_std, explained)
            yn = (p.y[test] - std.y_mean) / std.y_std - center
            rebuilt = (center + yn @ components.T @ components) * std.y_std + std.y_mean
            errors.append(np.mean(np.sqrt(((rebuilt - p.y[test]) ** 2).mean(0)) / p.y[test].std(0)))
        floors[n] = float(np.mean(errors))
    return floors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("runs/dbuq-gpp"))
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    store = work / "gpp.zarr"
    run(["dbuq", "ensemble", "--runs", "300", "--out", str(store)], work / "ensemble.log", store)
    chosen, searched = {}, []
    for reduce in ("pca", "none"):
        chosen[reduce], rows = search(work, store, reduce)
        searched += rows
    curves = []
    for reduce in ("pca", "none"):
        out = work / f"lc_{reduce}"
        run(["dbuq", "emulate", "--config", CONFIG, "--reduce", reduce, "--sizes", *map(str, SIZES), "--seeds",
             str(args.seeds), "--resample-runs", "--out", str(out), f"data.path={store}", *chosen[reduce]],
            work / f"lc_{reduce}.log", out / "learning_curve.json")
        curves += json.loads((out / "learning_curve.json").read_text())
    write_results(work, args.results, store, chosen, searched, curves, args.seeds)
    return 0


def write_results(work: Path, results: Path, store: Path, chosen: dict, searched: list[dict], curves: list[dict],
                  seeds: int) -> None:
    import numpy as np
    import xarray as xr

    from orbit.plugins.dbuq.learning_curve import markdown, plot

    ds = xr.open_zarr(store, consolidated=True)
    n_runs, n_cells, n_years = ds.gpp.shape
    drift = ds.adjust_drift.values
    mean = lambda reduce, n, key: float(np.mean([r[key] for r in curves  # noqa: E731
                                                 if r["reduce"] == reduce and r["n_train"] == n]))
    lines = ["## Land emulator learning curves on the toy land model's GPP ensemble (PCA-reduced vs direct)", "",
             "Measured with `nice python benchmarks/dbuq_gpp.py --work runs/dbuq-gpp` on a 2-core CPU VM shared with "
             "other jobs (CPU only, one thread per process).", "",
             f"Ensemble (`orbit dbuq ensemble --runs {n_runs}`): {n_runs} runs x 8 parameters -> annual GPP of "
             f"{n_cells} cells x {n_years} years = {n_cells * n_years} outputs; generated in "
             f"{ds.attrs['spinup_seconds']:.0f} s (shared spin-up) + {ds.attrs['runs_seconds']:.0f} s (runs). "
             f"Relative change of total GPP over each run's last adjustment year: median {np.median(drift):.2%}, "
             f"max {drift.max():.2%}. Runs 0-199 train, 200-249 validate, 250-299 test.", "",
             f"### Validation search ({SEARCH_RUNS} training runs, early stopping on validation relative RMSE)", "",
             "| emulator | settings | components | val R2 | val rel. RMSE |", "|---|---|---|---|---|"]
    for r in searched:
        lines.append(f"| {r['reduce']} | {' '.join(r['overrides'])} | {r['components']} | {r['val_r2']:.4f} | "
                     f"{r['val_rel_rmse']:.4f} |")
    explained = float(next(o.split("=")[1] for o in chosen["pca"] if o.startswith("model.explained_variance")))
    floors = pca_floor(store, SIZES, seeds, explained)
    lines += ["", "Chosen: " + "; ".join(f"{k}: {' '.join(v)}" for k, v in chosen.items()), "",
              f"### Learning curves (mean ± std over {seeds} seeds; each seed its own training runs and "
              "initialization)",
              "", markdown(curves), "",
              f"PCA truncation floor (test relative RMSE of the test runs' outputs projected on the training runs' "
              f"components, explained variance {explained}; no emulator on the scores can do better): " +
              ", ".join(f"{n} runs {v:.3f}" for n, v in floors.items()) + ".", ""]
    steps = {reduce: [np.mean([json.loads((work / f"lc_{reduce}" / f"{reduce}_n{n}_s{seed}" / "summary.json")
                                           .read_text())["selected"]["train"]["step"] for seed in range(seeds)])
                      for n in SIZES] for reduce in ("pca", "none")}
    lines += ["Step chosen by early stopping (of 1000, mean over seeds), at " + " / ".join(map(str, SIZES)) +
              " runs: " + "; ".join(f"{k} " + " / ".join(f"{v:.0f}" for v in vals) for k, vals in steps.items()) +
              ". Where it is 1000 the last state was the best: more steps might still help that emulator.", ""]
    holds = (mean("pca", 20, "test_rel_rmse") <= mean("none", 200, "test_rel_rmse")
             and mean("pca", 20, "test_r2") >= mean("none", 200, "test_r2"))
    lines += [f"Seed's claim (reduced at ~20 runs matches direct at ~200): PCA at 20 runs has test R2 "
              f"{mean('pca', 20, 'test_r2'):.4f} / relative RMSE {mean('pca', 20, 'test_rel_rmse'):.4f}; direct at "
              f"200 runs {mean('none', 200, 'test_r2'):.4f} / {mean('none', 200, 'test_rel_rmse'):.4f}: "
              f"{'holds' if holds else 'does not hold'} on this ensemble."]
    (results / "dbuq_gpp.md").write_text("\n".join(lines) + "\n")
    (results / "dbuq_gpp.json").write_text(json.dumps({"chosen": chosen, "search": searched, "curves": curves,
                                                       "pca_floor": floors}, indent=1))
    plot(curves, results / "dbuq_gpp_learning_curve.png")
    print("\n".join(lines))
    print(f"wrote {results}/dbuq_gpp.md, dbuq_gpp.json, dbuq_gpp_learning_curve.png")


if __name__ == "__main__":
    sys.exit(main())
