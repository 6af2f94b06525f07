"""DBUQ against surrogate + MCMC and NPE on synthetic-truth cases, with the amortization measured.

For each held-out run j (observation y*_j = y_j + N(0, sigma^2), seeded as in the task's evaluation):
- DBUQ: F([y*, z_k]) from the trained `dbuq` run (all cases in one call);
- MCMC: emcee on the `land_emulator` surrogate with the same likelihood and prior (`mcmc.py`), on the first
  `mcmc_cases` cases (it costs seconds per case);
- NPE: sbi's flow fitted on the same training runs (`npe.py`).
Reported: posterior mean / std / 5% / 95% per parameter for the first cases, coverage of the true parameters
(50/90% central intervals) and SBC rank p-values over the cases each method ran, the posterior predictive
check (the fraction of observations inside the 5-95% band of the surrogate's outputs over posterior
samples), and the costs: one-off (labels + training for DBUQ, training for NPE) and per observation, the
break-even number of observations N* = one-off cost / (MCMC per observation - method per observation), and
the time to calibrate `many` observations in one call.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from orbit.metrics import calibration as cal
from orbit.train.logging import log

from .mcmc import run_chain
from .npe import NPEPosterior
from .posterior import sample_posterior
from .problems import observations_with_noise
from .runs import load_run


def _scores(samples: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    ranks = cal.sbc_ranks(samples, truth)
    return {"cases": len(truth), "coverage_50": float(cal.interval_coverage(samples, truth, 0.5).mean()),
            "coverage_90": float(cal.interval_coverage(samples, truth, 0.9).mean()),
            "sbc_min_pvalue": float(cal.rank_uniformity_pvalues(ranks, samples.shape[1], bins=5).min())}


def _predictive_check(surrogate, samples: np.ndarray, y_obs: np.ndarray) -> float:
    """Fraction of (case, output) observations inside the 5-95% band of surrogate(posterior samples)."""
    inside = []
    for s, y in zip(samples, y_obs):
        pred = surrogate(s[:500])
        lo, hi = np.quantile(pred, [0.05, 0.95], axis=0)
        inside.append((y >= lo) & (y <= hi))
    return float(np.mean(inside))


def compare(dbuq_run: str | Path, emulator_run: str | Path, out_dir: str | Path, *, cases: int = 0,
            mcmc_cases: int = 10, mcmc_steps: int = 4000, walkers: int = 32, n_samples: int = 1000,
            npe: bool = True, many: int = 10000, seed: int = 0) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    task, net = load_run(dbuq_run, "dbuq")
    emu_task, emulator = load_run(emulator_run, "land_emulator")
    p = task.problem
    if emu_task.problem.name != p.name or not np.array_equal(emu_task.train_rows, task.train_rows):
        raise ValueError(f"the emulator run must be trained on the same problem and training runs as the DBUQ run "
                         f"({p.name}, {len(task.train_rows)} runs); got {emu_task.problem.name}, "
                         f"{len(emu_task.train_rows)} runs")
    surrogate = lambda x: emu_task.predict(emulator, x)  # noqa: E731
    rows = task.test_rows[:cases] if cases else task.test_rows
    y_obs = observations_with_noise(p, rows, task.cfg.data.seed)
    truth = p.x[rows]
    summary: dict = {"problem": p.name, "parameters": list(p.parameters), "cases": len(rows), "n_samples": n_samples,
                     "noise_sigma": p.sigma.tolist(), "methods": {}}
    forward = lambda y, z: net(y, z)  # noqa: E731
    metrics = json.loads(Path(dbuq_run, "summary.json").read_text()) if Path(dbuq_run, "summary.json").is_file() else {}
    train_seconds = _train_seconds(Path(dbuq_run)) + metrics.get("scalars", {}).get("label_seconds", 0.0)

    with torch.no_grad():
        sample_posterior(forward, task.norm, y_obs[:1], 10)  # warm-up
        start = time.perf_counter()
        dbuq = sample_posterior(forward, task.norm, y_obs, n_samples, seed)
        dbuq_per_obs = (time.perf_counter() - start) / len(rows)
        y_many = np.resize(y_obs, (many, y_obs.shape[1]))
        start = time.perf_counter()
        many_summary = cal.summarize(sample_posterior(forward, task.norm, y_many, 200, seed))
        many_seconds = time.perf_counter() - start
    posts = {"DBUQ": dbuq}
    costs = {"DBUQ": {"one_off_s": train_seconds, "per_obs_s": dbuq_per_obs}}
    summary["many"] = {"observations": many, "samples_each": 200, "seconds": many_seconds,
                       "finite": bool(np.isfinite(many_summary["mean"]).all())}

    log.info("DBUQ: %d observations in %.2f s (%.4f s each); %d observations in one call: %.1f s", len(rows),
             dbuq_per_obs * len(rows), dbuq_per_obs, many, many_seconds)
    if npe:
        post = NPEPosterior(p, task.train_rows, seed=seed)
        log.info("NPE trained in %.1f s", post.train_seconds)
        start = time.perf_counter()
        posts["NPE"] = post.sample(y_obs, n_samples, seed)
        costs["NPE"] = {"one_off_s": post.train_seconds, "per_obs_s": (time.perf_counter() - start) / len(rows)}

    chains = []
    pool = p.x[task.train_rows]
    for i in range(min(mcmc_cases, len(rows))):
        chains.append(run_chain(surrogate, p.prior, y_obs[i], p.sigma, pool, walkers=walkers, steps=mcmc_steps,
                                seed=seed + i))
        log.info("MCMC case %d: %.1f s, acceptance %.2f, autocorrelation %.0f steps", i, chains[-1].seconds,
                 chains[-1].acceptance, chains[-1].autocorr)
    if chains:
        keep = min(len(c.samples) for c in chains)
        posts["MCMC"] = np.stack([c.samples[-keep:] for c in chains])
        costs["MCMC"] = {"one_off_s": 0.0, "per_obs_s": float(np.mean([c.seconds for c in chains]))}
        summary["mcmc"] = {"steps": mcmc_steps, "walkers": walkers,
                           "acceptance": [round(c.acceptance, 3) for c in chains],
                           "autocorr_steps": [round(c.autocorr, 1) for c in chains],
                           "long_enough_50tau": [c.long_enough for c in chains]}

    for name, s in posts.items():
        m = len(s)
        entry = {**_scores(s, truth[:m]), **costs[name],
                 "predictive_inside_5_95": _predictive_check(surrogate, s, y_obs[:m])}
        if name != "MCMC" and "MCMC" in costs:
            saved = costs["MCMC"]["per_obs_s"] - entry["per_obs_s"]
            entry["break_even_obs"] = float(entry["one_off_s"] / saved) if saved > 0 else None
        summary["methods"][name] = entry
    first = min(3, len(rows))
    summary["posteriors"] = {name: {k: v[:first].tolist() for k, v in cal.summarize(s[:first]).items()}
                             for name, s in posts.items()}
    summary["truth"] = truth[:first].tolist()
    summary["observations"] = y_obs[:first].tolist()
    (out_dir / "compare.json").write_text(json.dumps(summary, indent=1))
    (out_dir / "compare.md").write_text(markdown(summary) + "\n")
    _plots(posts, truth, y_obs, surrogate, p, out_dir)
    return summary


def _train_seconds(run_dir: Path) -> float:
    """Training wall time of a run from its metrics.csv (sum of step times)."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return 0.0
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    if "step_time_s" not in header:
        return 0.0
    col, steps = header.index("step_time_s"), [line.split(",") for line in lines[1:]]
    step_col = header.index("step")
    rows = [(int(r[step_col]), float(r[col])) for r in steps if r[col] not in ("", "nan")]
    if len(rows) < 2:
        return 0.0
    gaps = np.diff([s for s, _ in rows], prepend=0)
    return float(sum(g * t for g, (_, t) in zip(gaps, rows)))


def markdown(summary: dict) -> str:
    lines = [f"### {summary['problem']}: {summary['cases']} synthetic-truth cases, noise sigma "
             f"{summary['noise_sigma'][0]:g}, {summary['n_samples']} samples per observation", "",
             "| method | cases | coverage 50% | coverage 90% | SBC min p | observations in 5-95% predictive band | "
             "one-off s | per observation s | break-even vs MCMC (observations) |", "|---|---|---|---|---|---|---|---|---|"]
    for name, e in summary["methods"].items():
        be = e.get("break_even_obs")
        lines.append(f"| {name} | {e['cases']} | {e['coverage_50']:.2f} | {e['coverage_90']:.2f} | "
                     f"{e['sbc_min_pvalue']:.3f} | {e['predictive_inside_5_95']:.2f} | {e['one_off_s']:.1f} | "
                     f"{e['per_obs_s']:.4f} | {'-' if be is None else f'{be:.1f}'} |")
    m = summary["many"]
    lines += ["", f"DBUQ on {m['observations']} observations in one call ({m['samples_each']} samples each): "
                  f"{m['seconds']:.1f} s."]
    if "mcmc" in summary:
        mc = summary["mcmc"]
        lines += [f"MCMC: {mc['walkers']} walkers x {mc['steps']} steps (half burn-in); acceptance "
                  f"{min(mc['acceptance']):.2f}-{max(mc['acceptance']):.2f}; autocorrelation time "
                  f"{min(mc['autocorr_steps']):.0f}-{max(mc['autocorr_steps']):.0f} steps; chains >= 50 tau: "
                  f"{sum(mc['long_enough_50tau'])}/{len(mc['long_enough_50tau'])}."]
    names = summary["parameters"]
    lines += ["", "Posterior of case 0 (mean / std / 5% / 95%; truth in the last column):", "",
              "| parameter | " + " | ".join(summary["posteriors"]) + " | truth |",
              "|---|" + "---|" * (len(summary["posteriors"]) + 1)]
    for d, name in enumerate(names):
        cells = [f"{s['mean'][0][d]:.4g} / {s['std'][0][d]:.3g} / {s['q05'][0][d]:.4g} / {s['q95'][0][d]:.4g}"
                 for s in summary["posteriors"].values()]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {summary['truth'][0][d]:.4g} |")
    return "\n".join(lines)


def _plots(posts: dict, truth: np.ndarray, y_obs: np.ndarray, surrogate, problem, out_dir: Path) -> None:
    import corner
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"DBUQ": "tab:blue", "MCMC": "black", "NPE": "tab:orange"}
    fig = None
    for name, s in posts.items():
        fig = corner.corner(s[0], fig=fig, color=colors[name], labels=list(problem.parameters), truths=truth[0],
                            range=list(zip(problem.prior.a, problem.prior.b)) if problem.prior.kind == "uniform"
                            else None, plot_datapoints=False, plot_density=False, levels=(0.5, 0.9),
                            hist_kwargs={"density": True})
    fig.legend([plt.Line2D([], [], color=colors[n]) for n in posts], list(posts), loc="upper right")
    fig.savefig(out_dir / "corner_case0.png", dpi=70)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    k = np.arange(y_obs.shape[1])
    for i, (name, s) in enumerate(posts.items()):
        pred = surrogate(s[0][:500])
        lo, mid, hi = np.quantile(pred, [0.05, 0.5, 0.95], axis=0)
        ax.fill_between(k + 0.08 * i, lo, hi, alpha=0.25, color=colors[name], label=f"{name} 5-95%")
        ax.plot(k + 0.08 * i, mid, color=colors[name])
    ax.errorbar(k, y_obs[0], yerr=problem.sigma, fmt="o", color="red", label="observation +- sigma")
    ax.set_xticks(k, list(problem.outputs))
    ax.set_ylabel("output")
    ax.set_title("posterior predictive (surrogate), case 0")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "predictive_case0.png", dpi=90)
    plt.close(fig)
