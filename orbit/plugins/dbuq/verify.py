"""DBUQ against exact answers on the problems that have them (`orbit dbuq verify --run-dir RUN`).

For the held-out synthetic-truth cases of a trained `dbuq` run on `linear_gaussian` or `nonlinear`:
- the reference posterior: analytic (linear-Gaussian) or a long emcee chain on the exact likelihood
  (nonlinear, first `mcmc_cases` cases);
- per case and parameter: |DBUQ mean - reference mean| / reference std and DBUQ std / reference std
  (averaged), and the same for the reference against itself is 0 / 1;
- over all cases: coverage of the true parameters by 50/90% intervals and SBC rank p-values (DBUQ and,
  for the analytic case, exact samples as the control).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from orbit.metrics import calibration as cal

from .mcmc import run_chain
from .posterior import sample_posterior
from .problems import observations_with_noise
from .runs import load_run


def verify(run_dir: str | Path, *, n_samples: int = 1000, mcmc_cases: int = 20, mcmc_steps: int = 10000,
           seed: int = 0) -> dict:
    task, net = load_run(run_dir, "dbuq")
    p = task.problem
    if p.forward is None:
        raise ValueError(f"run {str(run_dir)!r} is on {p.name!r}, which has no exact model; use `orbit dbuq compare`")
    rows = task.test_rows
    y_obs = observations_with_noise(p, rows, task.cfg.data.seed)
    truth = p.x[rows]
    samples = sample_posterior(net, task.norm, y_obs, n_samples, seed)
    out = {"problem": p.name, "cases": len(rows), "n_samples": n_samples, "training_runs": len(task.train_rows),
           "noise_sigma": p.sigma.tolist(), "parameters": list(p.parameters), "dbuq": _calibration(samples, truth)}
    if p.linear:
        mean, cov = p.analytic_posterior(y_obs)
        std = np.sqrt(np.diag(cov))
        errors = cal.gaussian_posterior_errors(samples, mean, std)
        out["reference"] = "analytic"
        rng = np.random.default_rng(seed)
        exact = mean[:, None, :] + rng.standard_normal(samples.shape) @ np.linalg.cholesky(cov).T
        out["exact_control"] = _calibration(exact, truth)
    else:
        m = min(mcmc_cases, len(rows))
        chains = [run_chain(p.forward, p.prior, y_obs[i], p.sigma, p.x[task.train_rows], steps=mcmc_steps,
                            seed=seed + i) for i in range(m)]
        ref = [c.samples for c in chains]
        mean, std = np.stack([r.mean(0) for r in ref]), np.stack([r.std(0) for r in ref])
        errors = cal.gaussian_posterior_errors(samples[:m], mean, std)
        out["reference"] = f"emcee on the exact likelihood, {m} cases, 32 walkers x {mcmc_steps} steps"
        out["mcmc"] = {"acceptance": [round(c.acceptance, 3) for c in chains],
                       "autocorr_steps": [round(c.autocorr, 1) for c in chains],
                       "long_enough_50tau": int(sum(c.long_enough for c in chains)),
                       "mcmc_calibration": _calibration(np.stack([r[-n_samples:] for r in ref]), truth[:m])}
    out["mean_error"] = errors["mean_error"].tolist()
    out["std_ratio"] = errors["std_ratio"].tolist()
    return out


def _calibration(samples: np.ndarray, truth: np.ndarray) -> dict:
    return {"coverage_50": cal.interval_coverage(samples, truth, 0.5).tolist(),
            "coverage_90": cal.interval_coverage(samples, truth, 0.9).tolist(),
            "sbc_pvalues": cal.rank_uniformity_pvalues(cal.sbc_ranks(samples, truth), samples.shape[1]).tolist()}


def markdown(result: dict) -> str:
    lines = [f"### {result['problem']}: {result['cases']} held-out cases, {result['training_runs']} training runs, "
             f"noise sigma {result['noise_sigma'][0]:g}; reference: {result['reference']}", "",
             "| parameter | mean error (/ ref. std) | std ratio | DBUQ coverage 50% | 90% | SBC p |"
             + (" exact-sample control: coverage 50% / 90% / SBC p |" if "exact_control" in result else ""),
             "|---|---|---|---|---|---|" + ("---|" if "exact_control" in result else "")]
    d, c = result["dbuq"], result.get("exact_control")
    for i, name in enumerate(result["parameters"]):
        row = (f"| {name} | {result['mean_error'][i]:.3f} | {result['std_ratio'][i]:.3f} | {d['coverage_50'][i]:.2f} | "
               f"{d['coverage_90'][i]:.2f} | {d['sbc_pvalues'][i]:.3g} |")
        if c:
            row += f" {c['coverage_50'][i]:.2f} / {c['coverage_90'][i]:.2f} / {c['sbc_pvalues'][i]:.3g} |"
        lines.append(row)
    lines.append(f"| mean | {np.mean(result['mean_error']):.3f} | {np.mean(result['std_ratio']):.3f} | "
                 f"{np.mean(d['coverage_50']):.2f} | {np.mean(d['coverage_90']):.2f} | "
                 f"{np.min(d['sbc_pvalues']):.3g} (min) |" + (" |" if c else ""))
    if "mcmc" in result:
        mc = result["mcmc"]
        lines += ["", f"emcee: acceptance {min(mc['acceptance']):.2f}-{max(mc['acceptance']):.2f}, autocorrelation "
                      f"time {min(mc['autocorr_steps']):.0f}-{max(mc['autocorr_steps']):.0f} steps, chains >= 50 tau: "
                      f"{mc['long_enough_50tau']}/{len(mc['acceptance'])}; MCMC's own coverage 50/90%: "
                      f"{np.mean(mc['mcmc_calibration']['coverage_50']):.2f} / "
                      f"{np.mean(mc['mcmc_calibration']['coverage_90']):.2f}"]
    return "\n".join(lines)


def write(result: dict, out_dir: str | Path) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "verify.json").write_text(json.dumps(result, indent=1))
    (out_dir / "verify.md").write_text(markdown(result) + "\n")
