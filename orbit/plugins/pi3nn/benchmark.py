"""`orbit uq benchmark`: PI3NN beside the field's interval methods (`methods.py`) on the same splits.

Protocol (UCI regression, as in the PI3NN paper and its predecessors): for split s = 0..S-1 a seeded
random 90/10 train/test split of the rows; of the training rows 10% are held out as the validation
part (early stopping of every network, the search's score) and another 10% as the calibration part
(read only by the methods that calibrate on held-out rows: pi3nn_cal, conformal, cqr); every method
fits on the remaining 80%; x and y standardised with the fitting rows' statistics only; for seed
k = 0..K-1 every method is fitted with the seed 1000 s + k. Scores on the test rows, in y's units: PICP (fraction inside) and MPIW (mean width / range
of y over the whole table), mean and std over the S*K fits, and the wall time of each fit.

PI3NN is trained through the one trainer (`trained.py`): a run of task "pi3nn" per split and seed in
`pi3nn/split<S>_seed<K>/`, on the same rows (checked), reused or resumed when the benchmark is relaunched.

With `tune_trials` N > 0 (`--tune-trials`), every method gets the same per-data-set random search of N
trials (each from its own space) with the same objective on the same validation rows (`tuning.py`): on each split's own validation
rows (`tune_on="each"`) or on split 0's for every split (`"first"`, N times cheaper; split 0's
validation rows can then be test rows of the other splits). The tuned methods are reported as
`<method>_tuned`; PI3NN's runs move to `pi3nn/trial<I>/split<S>_seed<K>/` and the search's scores to
`tune/split<S>.json`.

Outputs in the run directory: `summary.json` (per method: picp / mpiw mean and std, wall time, the
test calibration curve where the method answers any gamma), `runs.json` (every fit), `table.md`,
`calibration.png`. `--suite uci` does that for the six shared UCI tables (one directory each) and
writes `uci_table.md` / `uci_table.json`; `--suite ood` runs the paper's 10-D cubic OOD case.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from .data import Standardized, cubic, read_table, split_rows
from .intervals import CALIBRATION_LEVELS, check_confidence, mpiw, picp
from .methods import FITTERS, METHODS, Budget, Fitted, SplitData, fit_ensemble, fit_mc_dropout
from .trained import calibrator, outputs, train_run
from .tuning import SPACES, check_tuning, trial_budget, tune

PI3NN_VARIANTS = {"pi3nn": "train", "pi3nn_cal": "cal"}  # method -> rows of step 4
TEST_FRACTION, VAL_FRACTION, CAL_FRACTION = 0.1, 0.1, 0.1  # CAL, VAL: of the rows after the test rows

UCI_SETS = ("boston", "concrete", "energy", "kin8nm", "wine", "yacht")
DEFAULT_UCI_ROOT = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "uci"


def check_methods(methods) -> list[str]:
    methods = list(methods or METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; valid methods: {list(METHODS)}")
    return methods


def _split_data(table: Standardized, split) -> SplitData:
    return SplitData(table.xn[split.train], table.yn[split.train], table.xn[split.val], table.yn[split.val],
                     table.xn[split.test], table.xn[split.cal], table.yn[split.cal])


def _benchmark_split(n: int, seed: int):
    return split_rows(n, TEST_FRACTION, VAL_FRACTION, seed, CAL_FRACTION)


def _check_same_rows(task, split) -> None:
    if not all(np.array_equal(getattr(task.split, part), getattr(split, part))
               for part in ("train", "val", "cal", "test")):
        raise RuntimeError("the PI3NN run's train / validation / calibration / test rows differ from the benchmark's "
                           "split")


def pi3nn_fits(task, model, x_test: np.ndarray, train_wall: float,
               variants=tuple(PI3NN_VARIANTS)) -> dict[str, tuple[Fitted, float]]:
    """Step-4 variants of one trained PI3NN, each with the training wall time (shared networks)."""
    test = outputs(model, x_test)
    fits = {}
    for method in variants:
        cal = calibrator(task, model, PI3NN_VARIANTS[method])
        fits[method] = (Fitted(lambda g, cal=cal: cal.bounds(test[:, 0], test[:, 1], test[:, 2], g), test[:, 0],
                               extra={"calibrator": cal, "outputs": test}), train_wall)
    return fits


def _pi3nn_run(run_dir: Path, csv, gamma: float, s: int, k: int, budget: Budget, split, trial: int | None = None):
    """(task, model, wall s) of the PI3NN trainer run of split s, seed k (of search trial `trial`)."""
    start = time.perf_counter()
    overrides = [f"data.csv={Path(csv).resolve()}", f"data.seed={s}", f"train.seed={1000 * s + k}",
                 f"data.test_fraction={TEST_FRACTION}", f"data.val_fraction={VAL_FRACTION}",
                 f"data.cal_fraction={CAL_FRACTION}",
                 f"options.confidence={gamma}", *budget.pi3nn_overrides()]
    base = run_dir / "pi3nn" if trial is None else run_dir / "pi3nn" / f"trial{trial}"
    task, model = train_run(base / f"split{s}_seed{k}", overrides)
    _check_same_rows(task, split)
    return task, model, time.perf_counter() - start


def _search_wall(search: dict, trial: int) -> float:
    """Training time of a PI3NN search trial: the variant scored first trained it, the other reused it."""
    walls = search.get("wall_s", {})
    return float(sum(walls[m][trial] for m in PI3NN_VARIANTS if m in walls))


def run_benchmark(csv: str | Path, run_dir: str | Path, confidence: float = 0.95, splits: int = 5, seeds: int = 1,
                  methods=None, budget: Budget | None = None, log=print, tune_trials: int = 0,
                  tune_on: str = "each", spaces: dict | None = None) -> dict[str, Any]:
    gamma = check_confidence(confidence, "--confidence")
    if splits < 1 or seeds < 1:
        raise ValueError(f"--splits and --seeds must be >= 1, got {splits} and {seeds}")
    methods = check_methods(methods)
    spaces = spaces or SPACES
    check_tuning(tune_trials, tune_on, methods, spaces)
    budget = dataclasses.replace(budget or Budget(), confidence=gamma)
    x, y = read_table(csv)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    y_range = float(np.ptp(y))
    levels = sorted(set(CALIBRATION_LEVELS) | {gamma})
    runs, searches = [], {}
    label = {m: f"{m}_tuned" if tune_trials and m in spaces else m for m in methods}
    for s in range(splits):
        split = _benchmark_split(len(y), s)
        table = Standardized(x, y, split.train)
        data = _split_data(table, split)
        y_test = y[split.test]
        choice: dict[str, dict] = {}
        if tune_trials:
            t = s if tune_on == "each" else 0
            if t not in searches:
                t_split = _benchmark_split(len(y), t)
                t_data = _split_data(Standardized(x, y, t_split.train), t_split)
                log(f"{Path(csv).stem}: searching {tune_trials} trials on the validation rows of split {t}")
                searches[t], search_fits = tune(t_data, methods, budget, tune_trials, 1000 * t,
                                   lambda b, i: _pi3nn_run(run_dir, csv, gamma, t, 0, b, t_split, i)[:2],
                                   run_dir / "tune" / f"split{t}.json", spaces, log=log)
            choice = searches[t]["choice"]
        reuse = search_fits if tune_trials and s == t else {}  # the search's own fit of split s, seed 0
        for k in range(seeds):
            seed = 1000 * s + k
            fits, trained = {}, {}
            for variant in (m for m in methods if m in PI3NN_VARIANTS):
                trial = choice[variant]["trial"] if variant in choice else None
                if trial not in trained:
                    b = trial_budget(budget, choice[variant]["params"]) if variant in choice else budget
                    trained[trial] = _pi3nn_run(run_dir, csv, gamma, s, k, b, split, trial)
                    if tune_trials and k == 0 and s == t:  # the search's own run, reused: its training time
                        trained[trial] = (*trained[trial][:2], _search_wall(searches[t], trial))
                task, model, wall = trained[trial]
                fits[variant] = pi3nn_fits(task, model, data.x_test, wall, (variant,))[variant]
            for method in methods:
                start = time.perf_counter()
                b = trial_budget(budget, choice[method]["params"]) if method in choice else budget
                if method in fits:
                    fitted, wall = fits[method]
                elif k == 0 and method in reuse:
                    fitted, wall = reuse[method]
                else:
                    fitted, wall = FITTERS[method](data, b, seed), 0.0
                lower, upper = (a * table.y_std + table.y_mean for a in fitted.interval(gamma))
                wall += time.perf_counter() - start
                row = {"method": label[method], "split": s, "seed": k, "picp": picp(y_test, lower, upper),
                       "mpiw": mpiw(lower, upper, y_range), "wall_s": wall,
                       "rmse": float(np.sqrt(np.mean((fitted.mean * table.y_std + table.y_mean - y_test) ** 2)))}
                if fitted.any_gamma:
                    curve = []
                    for g in levels:
                        lo, hi = (a * table.y_std + table.y_mean for a in fitted.interval(g))
                        curve.append(picp(y_test, lo, hi))
                    row["calibration"] = curve
                runs.append(row)
                log(f"{Path(csv).stem} split {s} seed {k} {label[method]:10s} PICP {row['picp']:.4f} MPIW "
                    f"{row['mpiw']:.4f} ({wall:.1f} s)")
    summary = {"csv": str(csv), "rows": int(len(y)), "features": int(x.shape[1]), "confidence": gamma,
               "splits": splits, "seeds": seeds, "budget": budget.__dict__, "calibration_levels": levels,
               "methods": {}}
    if tune_trials:
        summary["tuning"] = {"trials": tune_trials, "on": tune_on, "spaces": {m: spaces[m] for m in methods if m in spaces},
                             "searches": {f"split{t}": r for t, r in searches.items()}}
    for method in (label[m] for m in methods):
        rows = [r for r in runs if r["method"] == method]
        entry = {key: {"mean": float(np.mean([r[key] for r in rows])), "std": float(np.std([r[key] for r in rows]))}
                 for key in ("picp", "mpiw", "rmse")}
        entry["wall_s"] = {"mean": float(np.mean([r["wall_s"] for r in rows])),
                           "total": float(np.sum([r["wall_s"] for r in rows]))}
        entry["fits"] = len(rows)
        if all("calibration" in r for r in rows):
            entry["calibration"] = np.mean([r["calibration"] for r in rows], axis=0).tolist()
        summary["methods"][method] = entry
    (run_dir / "runs.json").write_text(json.dumps(runs, indent=1))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    (run_dir / "table.md").write_text(format_table(summary))
    plot_calibration(summary, run_dir / "calibration.png", title=Path(csv).stem)
    return summary


def format_table(summary: dict[str, Any]) -> str:
    lines = [f"{summary['csv']}: {summary['rows']} rows x {summary['features']} inputs, {summary['splits']} split(s) x "
             f"{summary['seeds']} seed(s), {summary['confidence']:.0%} intervals", "",
             "| method | test PICP | test MPIW (/ range y) | test RMSE | wall s / fit |", "|---|---|---|---|---|"]
    for method, e in summary["methods"].items():
        lines.append(f"| {method} | {e['picp']['mean']:.3f} ± {e['picp']['std']:.3f} | {e['mpiw']['mean']:.3f} ± "
                     f"{e['mpiw']['std']:.3f} | {e['rmse']['mean']:.3f} | {e['wall_s']['mean']:.1f} |")
    return "\n".join(lines) + "\n"


def plot_calibration(summary: dict[str, Any], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    draw_calibration(ax, summary, title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def draw_calibration(ax, summary: dict[str, Any], title: str = "") -> None:
    """Mean test PICP against gamma per method on `ax`; a method fitted for one gamma is one point."""
    levels = summary["calibration_levels"]
    ax.plot([0.5, 1.0], [0.5, 1.0], "k:", lw=1, label="ideal")
    for i, (method, e) in enumerate(summary["methods"].items()):
        style = {"color": f"C{i % 10}", "label": method}
        if "calibration" in e:
            ax.plot(levels, e["calibration"], marker="o", ms=3, **style)
        else:  # fitted for one gamma only
            ax.plot([summary["confidence"]], [e["picp"]["mean"]], "s", **{**style, "label": f"{method} (one gamma)"})
    ax.set(xlabel="confidence level gamma", ylabel="test PICP", title=title)


def run_uci_suite(run_dir: str | Path, root: str | Path | None = None, sets=UCI_SETS, **kwargs) -> dict[str, Any]:
    root = Path(root) if root is not None else DEFAULT_UCI_ROOT
    run_dir = Path(run_dir)
    missing = [name for name in sets if not (root / f"{name}.csv").is_file()]
    if missing:
        raise FileNotFoundError(f"UCI tables {missing} not found under {str(root)!r} (give --data-root)")
    results = {name: run_benchmark(root / f"{name}.csv", run_dir / name, **kwargs) for name in sets}
    (run_dir / "uci_table.json").write_text(json.dumps(results, indent=1))
    (run_dir / "uci_table.md").write_text(format_suite(results))
    return results


def format_suite(results: dict[str, dict]) -> str:
    first = next(iter(results.values()))
    order = [name for m in METHODS for name in (m, f"{m}_tuned")]  # a tuned method beside its shipped setting
    methods = sorted(dict.fromkeys(m for s in results.values() for m in s["methods"]),  # every set's methods
                     key=lambda m: order.index(m) if m in order else len(order))
    gamma = first["confidence"]
    out = [f"{gamma:.0%} intervals, test PICP and MPIW (/ range of y), mean ± std over {first['splits']} split(s) x "
           f"{first['seeds']} seed(s); **bold** MPIW: narrowest among the methods whose mean PICP >= {gamma - 0.01:.2f}",
           ""]
    for key, label in (("picp", "PICP"), ("mpiw", "MPIW")):
        out += [f"### {label}", "", "| data | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
        for name, s in results.items():
            ok = [m for m in s["methods"] if s["methods"][m]["picp"]["mean"] >= gamma - 0.01]
            best = min(ok, key=lambda m: s["methods"][m]["mpiw"]["mean"]) if ok else None
            cells = []
            for m in methods:
                if m not in s["methods"]:  # not run on this set
                    cells.append("–")
                    continue
                e = s["methods"][m][key]
                cell = f"{e['mean']:.3f} ± {e['std']:.3f}"
                cells.append(f"**{cell}**" if key == "mpiw" and m == best else cell)
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        out.append("")
    out += ["### wall time per fit (s)", "", "| data | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for name, s in results.items():
        out.append(f"| {name} | " + " | ".join(f"{s['methods'][m]['wall_s']['mean']:.1f}" if m in s["methods"] else "–"
                                              for m in methods) + " |")
    out += _format_choices(results)
    return "\n".join(out) + "\n"


def _format_choices(results: dict[str, dict]) -> list[str]:
    """The settings the per-set search chose, one row per set and method: the chosen trial of each
    searched split (trial 0: the shipped setting), those trials' settings, the mean validation score
    and the search's wall time summed over the splits."""
    rows = []
    for name, s in results.items():
        searches = s.get("tuning", {}).get("searches", {})
        methods = dict.fromkeys(m for search in searches.values() for m in search["choice"])
        for method in methods:
            chosen = {split: search["choice"][method] for split, search in searches.items()}
            settings = {c["trial"]: ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                                              for k, v in c["params"].items()) or "shipped" for c in chosen.values()}
            wall = sum(sum(search.get("wall_s", {}).get(method, [])) for search in searches.values())
            rows.append(f"| {name} | {method} | {' '.join(str(c['trial']) for c in chosen.values())} | "
                        + "; ".join(f"{t}: {settings[t]}" for t in sorted(settings))
                        + f" | {np.mean([c['score'] for c in chosen.values()]):.3f} | {wall:.0f} |")
    if not rows:
        return []
    first = next(s["tuning"] for s in results.values() if "tuning" in s)
    where = "each split's own validation rows" if first["on"] == "each" else "split 0's validation rows"
    return ["", f"### settings chosen by the search ({first['trials']} trials per method, on {where})", "",
            "| data | method | chosen trial per split | settings of the chosen trials | mean val interval score | "
            "search s |", "|---|---|---|---|---|---|", *rows]


# ----------------------------------------------------------------------------- OOD
def run_ood(run_dir: str | Path, confidence: float = 0.95, seeds: int = 3, n_train: int = 2000, n_test: int = 1000,
            shift: float = 2.0, budget: Budget | None = None, log=print) -> dict[str, Any]:
    """The paper's 10-D cubic case: train x ~ N(0, 1), test in distribution and at x ~ N(shift, 1).
    Per method: mean 95% width in distribution and out of it, their ratio, and the mean confidence
    score min(w_ref / w(x), 1) (PI3NN: w_ref = mean training width; the others: mean ID test width)."""
    gamma = check_confidence(confidence, "--confidence")
    budget = budget or Budget()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # benchmark.yaml's setting (early stopping, weight decay on f only) with the OOD initialisation on and off,
    # the two weight decays it was chosen against: none, and on all three networks (which lets the
    # undecayed output bias of u, l fall everywhere instead), and the trial the UCI search chose most
    # (decay on u, l only, none on f, lr 0.01)
    pi3nn = {"pi3nn (OOD init)": ("ood", ["model.ood_init=true"]),
             "pi3nn (no OOD init)": ("plain", ["model.ood_init=false"]),
             "pi3nn (OOD init, no weight decay)": ("ood_nodecay", ["model.ood_init=true", "train.weight_decay=0"]),
             "pi3nn (OOD init, weight decay on f, u, l)": ("ood_decay_all", ["model.ood_init=true",
                                                                              "options.bound_weight_decay=5"]),
             "pi3nn (OOD init, weight decay 1 on u, l only)": ("ood_decay_bounds", [
                 "model.ood_init=true", "train.weight_decay=0", "train.lr=0.01", "options.bound_weight_decay=1"])}
    baselines = {"ensemble": fit_ensemble, "mc_dropout": fit_mc_dropout}
    n_rows = int(round(n_train / 0.81))  # the task's 10% test (unused here), then 10% validation: ~n_train training rows
    rows, distance_plot = [], {}
    for k in range(seeds):
        x, y = cubic(n_rows, seed=k)
        xi, yi = cubic(n_test, seed=1000 + k)
        xo, yo = cubic(n_test, seed=2000 + k, shift=shift)
        split = split_rows(n_rows, 0.1, 0.1, seed=k)
        table = Standardized(x, y, split.train)
        data = SplitData(table.xn[split.train], table.yn[split.train], table.xn[split.val], table.yn[split.val],
                         np.concatenate([table.scale_x(xi), table.scale_x(xo)]))
        for name in [*pi3nn, *baselines]:
            start = time.perf_counter()
            if name in pi3nn:
                tag, variant = pi3nn[name]
                overrides = ["data.synthetic=cubic", f"data.n_samples={n_rows}", f"data.seed={k}",
                             f"train.seed={1000 + k}", f"options.confidence={gamma}", *budget.pi3nn_overrides(),
                             *variant]
                task, model = train_run(run_dir / "pi3nn" / f"{tag}_seed{k}", overrides)
                _check_same_rows(task, split)
                fitted = pi3nn_fits(task, model, data.x_test, 0.0, ("pi3nn",))["pi3nn"][0]
                cal, out = fitted.extra["calibrator"], fitted.extra["outputs"]
                score = cal.confidence_score(out[:, 1], out[:, 2], gamma)
            else:
                fitted = baselines[name](data, budget, 1000 + k)
            lower, upper = fitted.interval(gamma)
            width = (upper - lower) * table.y_std
            if name not in pi3nn:
                score = np.minimum(width[:n_test].mean() / width, 1.0)
            truth = np.concatenate([yi, yo])
            inside = (truth >= lower * table.y_std + table.y_mean) & (truth <= upper * table.y_std + table.y_mean)
            w_id, w_ood = width[:n_test], width[n_test:]
            rows.append({"method": name, "seed": k, "width_id": float(w_id.mean()), "width_ood": float(w_ood.mean()),
                         "ratio": float(w_ood.mean() / w_id.mean()), "score_id": float(score[:n_test].mean()),
                         "score_ood": float(score[n_test:].mean()), "picp_id": float(inside[:n_test].mean()),
                         "picp_ood": float(inside[n_test:].mean()), "wall_s": time.perf_counter() - start})
            log(f"ood seed {k} {name:20s} width ID {rows[-1]['width_id']:.2f} OOD {rows[-1]['width_ood']:.2f} "
                f"ratio {rows[-1]['ratio']:.2f} score ID {rows[-1]['score_id']:.3f} OOD {rows[-1]['score_ood']:.3f}")
            if k == 0:
                dist = np.linalg.norm(np.concatenate([xi, xo]), axis=1)
                distance_plot[name] = (dist, width)
    summary = {"confidence": gamma, "seeds": seeds, "n_train": n_train, "shift": shift, "budget": budget.__dict__,
               "methods": {}}
    for name in [*pi3nn, *baselines]:
        rs = [r for r in rows if r["method"] == name]
        summary["methods"][name] = {key: {"mean": float(np.mean([r[key] for r in rs])),
                                          "std": float(np.std([r[key] for r in rs]))}
                                    for key in ("width_id", "width_ood", "ratio", "score_id", "score_ood", "picp_id", "picp_ood",
                                                "wall_s")}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    (run_dir / "runs.json").write_text(json.dumps(rows, indent=1))
    lines = [f"10-D cubic, train x ~ N(0,1) ({n_train} rows), test ID x ~ N(0,1) and OOD x ~ N({shift},1) "
             f"({n_test} each), {gamma:.0%} intervals, mean ± std over {seeds} seed(s)", "",
             "| method | width ID | width OOD | ratio OOD/ID | confidence score ID | confidence score OOD | PICP ID | PICP OOD |",
             "|---|---|---|---|---|---|---|---|"]
    for name, e in summary["methods"].items():
        lines.append(f"| {name} | {e['width_id']['mean']:.2f} | {e['width_ood']['mean']:.2f} | "
                     f"{e['ratio']['mean']:.2f} ± {e['ratio']['std']:.2f} | {e['score_id']['mean']:.3f} | "
                     f"{e['score_ood']['mean']:.3f} | {e['picp_id']['mean']:.3f} | {e['picp_ood']['mean']:.3f} |")
    (run_dir / "table.md").write_text("\n".join(lines) + "\n")
    _plot_width_vs_distance(distance_plot, run_dir / "width_vs_distance.png")
    return summary


def _plot_width_vs_distance(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, (dist, width) in curves.items():
        order = np.argsort(dist)
        bins = np.array_split(order, 20)
        ax.plot([dist[b].mean() for b in bins], [width[b].mean() for b in bins], marker="o", ms=3, label=name)
    ax.set(xlabel="|x| (distance from the training mean)", ylabel="95% interval width", yscale="log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(args) -> int:
    """The `orbit uq benchmark` handler (arguments parsed by orbit/cli.py)."""
    budget = Budget(steps=args.steps)
    if (args.csv is None) == (args.suite is None):
        raise ValueError("give exactly one of --csv FILE or --suite {uci,ood}")
    run_dir = Path(args.run_dir)
    tuning = {"tune_trials": args.tune_trials, "tune_on": args.tune_on}
    if args.suite == "ood" and args.tune_trials:
        raise ValueError(f"--tune-trials={args.tune_trials}: the search is for --csv and --suite uci; the OOD suite "
                         "compares fixed settings")
    check_tuning(args.tune_trials, args.tune_on, check_methods(args.methods))
    if args.suite == "ood":
        run_ood(run_dir, args.confidence, seeds=args.seeds, budget=budget)
        print((run_dir / "table.md").read_text())
    elif args.suite == "uci":
        sets = args.datasets or UCI_SETS
        unknown = [s for s in sets if s not in UCI_SETS]
        if unknown:
            raise ValueError(f"unknown UCI set(s) {unknown}; valid: {list(UCI_SETS)}")
        run_uci_suite(run_dir, args.data_root, sets=sets, confidence=args.confidence, splits=args.splits,
                      seeds=args.seeds, methods=args.methods, budget=budget, **tuning)
        print((run_dir / "uci_table.md").read_text())
    else:
        run_benchmark(args.csv, run_dir, args.confidence, args.splits, args.seeds, args.methods, budget, **tuning)
        print((run_dir / "table.md").read_text())
    return 0
