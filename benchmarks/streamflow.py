"""Streamflow benchmark: every model family through `orbit train` on the synthetic basins (temporal
and ungauged protocols, 1-30 day forecasts) and the shared CAMELS-US basins, then `orbit explain`;
writes benchmarks/results/streamflow_benchmark.md (+ .json, lead-time and NSE-CDF figures).

Every model gets the same budget (steps, batch, learning rate, schedule) and the same model selection:
the configs keep the state with the lowest validation loss of the evaluations every `--eval-every`
steps (train.select_best); nothing else is tuned. The process-based baseline (the conceptual model
calibrated per basin, orbit/plugins/streamflow/conceptual.py) is computed on the temporal, ungauged and
CAMELS splits (cases 0, 3, 8); for runs trained before it existed, `orbit evaluate` adds it to the run's
checkpoint. A case whose run directory holds a summary is not run again. Run from the repository root
(one CPU thread per process is plenty):

    OMP_NUM_THREADS=1 python benchmarks/streamflow.py --steps 1000 --out benchmarks/results/streamflow
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

CFG = "configs/plugins/streamflow"
CONCEPTUAL = "eval.conceptual_baseline=true"  # the calibrated process baseline (conceptual.py), once per split
# (label, config, protocol, extra overrides)
CASES = [
    ("lstm", "lstm.yaml", "temporal", [CONCEPTUAL]),
    ("geo_lstm", "geo_lstm.yaml", "temporal", []),
    ("imv_lstm", "imv_lstm.yaml", "temporal", []),
    ("lstm", "lstm.yaml", "ungauged (fold 0 of 5)", ["data.split=basins", "data.fold=0", CONCEPTUAL]),
    ("geo_lstm", "geo_lstm.yaml", "ungauged (fold 0 of 5)", ["data.split=basins", "data.fold=0"]),
    ("geo_lstm (one sequence)", "forecast_lstm.yaml", "forecast 1-30 d", []),
    ("lstm_ed", "lstm_ed.yaml", "forecast 1-30 d", []),
    ("tst", "tst.yaml", "forecast 1-30 d", []),
    ("geo_lstm", "camels.yaml", "CAMELS-US 3 basins, temporal", [CONCEPTUAL, "eval.conceptual_spinup=90"]),
    ("lstm + PI3NN", "lstm.yaml", "changing conditions (90% intervals)", ["options.intervals=true",
                                                                          "options.bound_steps=500"]),
    ("lstm + PI3NN", "changing.yaml", "changing conditions, 0.2 degC/yr (90% intervals)",
     ["options.bound_steps=500"]),
    ("lstm + PI3NN", "changing.yaml", "changing conditions, 0.4 degC/yr (90% intervals)",
     ["options.bound_steps=500", "data.warming=0.4"]),
    ("lstm (365-day sequences)", "lstm_365.yaml", "temporal", []),
]
EXPLAIN = {0: ["ig", "shap"], 2: ["attention"], 7: ["attention"]}  # case index -> methods
FIGURES = [(0, "explain/attribution_ig.png", "attribution_ig.png"), (0, "explain/attribution_shap.png",
            "attribution_shap.png"), (2, "explain/attention_imv.png", "attention_imv.png"),
           (9, "streamflow_hydrograph.png", "hydrograph_intervals.png"),
           (10, "streamflow_hydrograph.png", "hydrograph_intervals_warming.png")]


def _orbit(args: list[str], log: Path) -> float:
    start = time.time()
    with open(log, "w") as handle:
        done = subprocess.run([sys.executable, "-m", "orbit", *args], stdout=handle, stderr=subprocess.STDOUT,
                              env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    if done.returncode != 0:
        raise SystemExit(f"orbit {' '.join(args)} failed; see {log}")
    return time.time() - start


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--eval-basins", type=int, default=25, help="basins scored per split (evenly spaced)")
    parser.add_argument("--eval-every", type=int, default=100, help="steps between validation losses (selection)")
    parser.add_argument("--seed", type=int, default=0, help="train.seed of every case (data stay the same)")
    parser.add_argument("--runs", type=Path, default=Path("runs/streamflow-benchmark"))
    parser.add_argument("--out", default="benchmarks/results/streamflow")
    parser.add_argument("--cases", type=int, nargs="+", default=None, help="indices into CASES (default: all)")
    parser.add_argument("--skip-conceptual", action="store_true",
                        help="no process baseline (it does not depend on --seed: calibrated once, with seed 0)")
    parser.add_argument("--fold", type=int, default=0, help="data.fold of the ungauged cases (of 5)")
    parser.add_argument("--skip-explain", action="store_true", help="no `orbit explain` (e.g. for a second seed)")
    args = parser.parse_args()
    budget = [f"train.max_steps={args.steps}", f"data.batch_size={args.batch_size}",
              f"train.eval_every={args.eval_every}", f"train.ckpt_every={args.steps}",
              f"train.warmup_steps={max(1, args.steps // 20)}", f"eval.max_basins={args.eval_basins}",
              "train.log_every=100", f"train.seed={args.seed}"]
    args.runs.mkdir(parents=True, exist_ok=True)
    results = []
    for index, (label, config, protocol, extra) in enumerate(CASES):
        if args.cases is not None and index not in args.cases:
            continue
        if args.skip_conceptual:
            extra = [o for o in extra if not o.startswith("eval.conceptual")]
        if "data.fold=0" in extra:
            extra = [f"data.fold={args.fold}" if o == "data.fold=0" else o for o in extra]
            protocol = protocol.replace("fold 0", f"fold {args.fold}")
        run = args.runs / f"case{index}"
        if (run / "summary.json").is_file():
            bench = run / "bench.json"
            seconds = json.loads(bench.read_text())["seconds"] if bench.is_file() else None
        else:
            seconds = _orbit(["train", "--config", f"{CFG}/{config}", "--run-dir", str(run), *budget, *extra],
                             args.runs / f"case{index}.log")
            (run / "bench.json").write_text(json.dumps({"seconds": seconds}))
        summary = json.loads((run / "summary.json").read_text())
        if CONCEPTUAL in extra and "conceptual" not in summary:  # a run trained before the baseline existed
            if not (run / "conceptual" / "evaluation.json").is_file():
                _orbit(["evaluate", "--run-dir", str(run), "--out", str(run / "conceptual"),
                        *[o for o in extra if o.startswith("eval.conceptual")]],
                       args.runs / f"case{index}_conceptual.log")
            summary = {**json.loads((run / "conceptual" / "evaluation.json").read_text()),  # same checkpoint
                       "selected": summary.get("selected")}
        entry = {"index": index, "label": label, "config": config, "protocol": protocol, "overrides": extra,
                 "seconds": seconds, "median": summary["median"], "intervals": summary.get("intervals"),
                 "selected": summary.get("selected"),
                 "conceptual": {k: v for k, v in summary.get("conceptual", {}).items()
                                if k not in ("parameters", "train_objective", "donors")} or None,
                 "test_nse": {name: [v["nse"][0] for v in table.values()]
                              for name, table in summary["per_basin"]["test"].items()}}
        if entry["conceptual"] and summary["conceptual"]["regionalisation"].startswith("own") \
                and "synthetic" in (run / "config.yaml").read_text():
            entry["conceptual"]["recovery"] = parameter_recovery(summary["conceptual"]["parameters"], run)
        explain = index in EXPLAIN and not args.skip_explain
        if explain and not (run / "explain" / "explanations.json").is_file():
            _orbit(["explain", "--run-dir", str(run), "--methods", *EXPLAIN[index], "--samples", "256"],
                   args.runs / f"case{index}_explain.log")
        if explain:
            entry["explain"] = json.loads((run / "explain" / "explanations.json").read_text())
        results.append(entry)
        print(f"case {index} {label} {protocol}: {seconds and round(seconds)} s", flush=True)
    out = Path(args.out)
    Path(f"{out}_benchmark.json").write_text(json.dumps({"budget": budget, "results": results}, indent=1))
    Path(f"{out}_benchmark.md").write_text(markdown(results, budget, args) + "\n")
    lead_figure(results, Path(f"{out}_lead_nse.png"))
    cdf_figure(results, Path(f"{out}_nse_cdf.png"))
    for index, name, target in FIGURES:
        source = args.runs / f"case{index}" / name
        if source.is_file():
            shutil.copy(source, f"{out}_{target}")
    return 0


def parameter_recovery(fitted: dict[str, dict[str, float]], run: Path) -> dict[str, dict[str, float]]:
    """{parameter: median |calibrated - true|, Pearson r over basins, true range} of the conceptual
    model calibrated on synthetic basins, against the generator's attribute-derived parameters."""
    from orbit.config import load_config
    from orbit.plugins.streamflow.synthetic import attribute_parameters
    from orbit.plugins.streamflow.task import load_basins

    data = load_basins(load_config(run / "config.yaml").data)
    rows = [data.basins.index(b) for b in fitted]
    truth = attribute_parameters(data.static.astype(np.float64)[rows])
    out = {}
    for name, true in truth.items():
        est = np.array([fitted[b][name] for b in fitted])
        out[name] = {"median_abs_error": float(np.median(np.abs(est - true))),
                     "r": float(np.corrcoef(est, true)[0, 1]) if np.ptp(true) > 0 else None,
                     "true_min": float(true.min()), "true_max": float(true.max())}
    return out


def _model_key(median: dict) -> str:
    return next(k for k in median if k not in ("climatology", "persistence", "conceptual"))


def _flags(args) -> str:
    """The non-default options of this run, for the reproduce command."""
    flags = [f"--runs {args.runs}"] if str(args.runs) != "runs/streamflow-benchmark" else []
    flags += [f"--cases {' '.join(map(str, args.cases))}"] if args.cases else []
    flags += [f"--fold {args.fold}"] if args.fold else []
    flags += [f"--{name.replace('_', '-')}" for name in ("skip_conceptual", "skip_explain") if getattr(args, name)]
    flags += [f"--out {args.out}"] if args.out != "benchmarks/results/streamflow" else []
    return "".join(" " + f for f in flags)


def markdown(results: list[dict], budget: list[str], args) -> str:
    lines = ["# Streamflow benchmark", "",
             f"Command: `OMP_NUM_THREADS=1 python benchmarks/streamflow.py --steps {args.steps} --batch-size "
             f"{args.batch_size} --eval-basins {args.eval_basins} --eval-every {args.eval_every} --seed "
             f"{args.seed}{_flags(args)}`; every case: `orbit train --config configs/plugins/streamflow/<config> "
             f"{' '.join(budget)} <overrides>`. Same budget for every model; the state kept is the one with the "
             f"lowest validation loss (`train.select_best: val_{{phase}}_loss` in the configs; chosen step(s) "
             f"below, '–': a run from before model selection, last step), nothing else tuned. Median over "
             f"scored basins of NSE / KGE (lead 1; forecasts also lead 30), validation and test periods kept "
             f"apart (synthetic: train 1981-95, val 1996-2000, test 2001-09, the warmest years of the warming "
             f"trend: 0.03 degC/yr, changing.yaml 0.2 degC/yr).", "",
             "| model | protocol | config | chosen step(s) | val NSE | test NSE | test KGE | test NSE lead 30 "
             "| persistence test NSE | climatology test NSE | wall s (train + eval, busy shared CPU) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        m = r["median"]
        key = _model_key(m["test"])
        pers = m["test"].get("persistence", {}).get("nse", [None])
        chosen = " / ".join(str(v["step"]) for v in (r.get("selected") or {}).values()) or "–"
        lines.append(f"| {r['label']} | {r['protocol']} | {r['config']} {' '.join(r['overrides'])} | {chosen} | "
                     f"{_fmt(m['val'][key]['nse'][0])} | {_fmt(m['test'][key]['nse'][0])} | "
                     f"{_fmt(m['test'][key]['kge'][0])} | "
                     f"{_fmt(m['test'][key]['nse'][-1]) if len(m['test'][key]['nse']) > 1 else '–'} | "
                     f"{_fmt(pers[0])} | {_fmt(m['test']['climatology']['nse'][0])} | "
                     f"{'–' if r['seconds'] is None else round(r['seconds'])} |")
    conceptual = [r for r in results if r.get("conceptual")]
    if conceptual:
        c = conceptual[0]["conceptual"]
        lines += ["", "## Process-based baseline: the conceptual model calibrated per basin", "",
                  f"The HBV-like model of the synthetic generator with 9 free parameters, calibrated per basin on the "
                  f"training period only ({c['optimiser']}, seed {c['seed']}, {c['generations']} generations x "
                  f"popsize {c['popsize']} x 9 = {(c['generations'] + 1) * c['popsize'] * 9} runs per basin, "
                  f"maximising {c['objective'].upper()}, spin-up days not scored); ungauged basins take the "
                  f"parameters of the nearest training basin in z-scored static attributes. On the synthetic basins "
                  f"it is the generator's own structure (an upper bound more than a baseline); on CAMELS a real "
                  f"baseline. The temporal split's test years 2001-09 are the warmest (changing conditions). "
                  f"For runs trained before the baseline existed it is added on the same checkpoint by `orbit "
                  f"evaluate --run-dir <case> --out <case>/conceptual eval.conceptual_baseline=true` (the model's "
                  f"scores are unchanged).", "",
                  "| protocol | scored basins use | calibrated basins | median train NSE | val NSE | test NSE | "
                  "test KGE | model (same split) test NSE | calibration s (one core, busy) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in conceptual:
            c, m = r["conceptual"], r["median"]
            lines.append(f"| {r['protocol']} | {c['regionalisation']} | {c['calibrated_basins']} | "
                         f"{c['train_objective_median']:.3f} | {_fmt(m['val']['conceptual']['nse'][0])} | "
                         f"{_fmt(m['test']['conceptual']['nse'][0])} | {_fmt(m['test']['conceptual']['kge'][0])} | "
                         f"{r['label']} {_fmt(m['test'][_model_key(m['test'])]['nse'][0])} | "
                         f"{c['calibration_seconds']:.0f} |")
        for r in conceptual:
            if "recovery" not in r["conceptual"]:
                continue
            lines += ["", f"Parameter recovery on the synthetic basins ({r['protocol']}, "
                          f"{r['conceptual']['calibrated_basins']} basins), calibrated against the generator's true "
                          f"parameters (lp and tt are constant in the generator):", "",
                      "| parameter | true range | median abs error | r over basins |", "|---|---|---|---|"]
            for name, v in r["conceptual"]["recovery"].items():
                lines.append(f"| {name} | {v['true_min']:.3g}-{v['true_max']:.3g} | {v['median_abs_error']:.3g} | "
                             f"{_fmt(v['r'])} |")
    for r in results:
        if not r.get("intervals"):
            continue
        iv = r["intervals"]
        lines += ["", f"## {r['protocol']}: {r['label']} ({r['config']}), {100 * iv['confidence']:.0f}% PI3NN "
                      f"intervals calibrated on the validation period (1996-2000), lead 1, pooled over scored "
                      f"basins", "",
                  "| period | year | PICP | mean width (mm/day) | RMSE (mm/day) |", "|---|---|---|---|---|"]
        for split in ("val", "test"):
            for row in iv[split]["by_year"]:
                lines.append(f"| {split} | {row['year']} | {row['picp']:.3f} | {row['width']:.3f} | "
                             f"{row['rmse']:.3f} |")
        lines.append(f"\nSpearman correlation of mean interval width with RMSE over test basins: "
                     f"{_fmt(iv['test']['spearman_width_rmse_over_basins'])}, over test years: "
                     f"{_fmt(iv['test'].get('spearman_width_rmse_over_years'))}; test PICP {iv['test']['picp']:.3f}, "
                     f"validation PICP {iv['val']['picp']:.3f}.")
    for r in results:
        if "explain" not in r:
            continue
        e = r["explain"]
        lines += ["", f"## Explanations: {r['label']} ({r['protocol']}), {e['samples']} test samples, lead "
                      f"{e['lead']}"]
        if "ig_completeness" in e:
            c = e["ig_completeness"]
            lines.append(f"- IG completeness: mean |gap| {c['mean_abs_gap']:.4f}, median {c['median_abs_gap']:.2e}, "
                         f"mean |F(x) - F(x0)| {c['mean_abs_output_change']:.3f}; share of samples with a gap above "
                         f"5%: {c['share_gap_above_5pct']:.2f}")
        for method in ("ig", "shap"):
            if f"{method}_importance" in e:
                imp = e[f"{method}_importance"]
                lines.append(f"- {method} mean |attribution| per driver: " +
                             ", ".join(f"{k} {v:.3f}" for k, v in imp.items()))
                t = e.get(f"{method}_truth_checks")
                if t:
                    lines.append(f"  - ranking {t['driver_ranking']}; unused `noise` driver last: "
                                 f"{t['noise_ranks_last']}; temperature share of attribution on days with true "
                                 f"snowmelt {_fmt(t['temperature_share_melt_days'])} ({t['melt_days']} samples) vs "
                                 f"other days {_fmt(t['temperature_share_other_days'])} ({t['other_days']})")
        if "imv_variable_importance" in e:
            lines.append("- IMV-LSTM variable attention (mean beta): " +
                         ", ".join(f"{k} {v:.3f}" for k, v in e["imv_variable_importance"].items()))
        if "tst_cross_attention_lead1_peak_lag" in e:
            lines.append(f"- TST: lead-1 cross-attention peaks at day {e['tst_cross_attention_lead1_peak_lag']} "
                         f"relative to the issue day")
    return "\n".join(lines)


def lead_figure(results: list[dict], path: Path) -> None:
    forecasts = [r for r in results if r["protocol"].startswith("forecast")]
    if not forecasts:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in forecasts:
        nse = r["median"]["test"][_model_key(r["median"]["test"])]["nse"]
        ax.plot(np.arange(1, len(nse) + 1), [np.nan if v is None else v for v in nse], marker="o", ms=3,
                label=r["label"])
    for ref in ("persistence", "climatology"):
        nse = forecasts[0]["median"]["test"][ref]["nse"]
        ax.plot(np.arange(1, len(nse) + 1), [np.nan if v is None else v for v in nse], ls="--", label=ref)
    ax.set(xlabel="lead (days)", ylabel="median test NSE", title="synthetic basins, 2001-2009")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cdf_figure(results: list[dict], path: Path) -> None:
    """CDF over test basins of lead-1 NSE, per model and protocol (synthetic cases), and the references
    of the temporal protocol."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        if r["config"] == "camels.yaml" or r.get("intervals"):
            continue
        key = _model_key(r["median"]["test"])
        names = [key] + (["persistence", "climatology"] if r["index"] == 0 else []) + \
            (["conceptual"] if "conceptual" in r["test_nse"] else [])
        for name in names:
            nse = np.sort([v for v in r["test_nse"][name] if v is not None])
            label = f"{r['label']} ({r['protocol']})" if name == key else \
                f"{name} ({r['protocol']})" if name == "conceptual" else f"{name} (temporal)"
            ax.step(np.clip(nse, -1, 1), np.arange(1, len(nse) + 1) / len(nse), where="post", label=label,
                    ls="-" if name == key else "--")
    ax.set(xlabel="test NSE, lead 1 (clipped at -1)", ylabel="fraction of basins", xlim=(-1, 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
