"""Calibration of posterior samples against known truths (simulation-based calibration) and exact posteriors.

Shapes: samples (M, S, D) = S posterior draws for each of M observations; truth (M, D).

- SBC rank (Talts et al. 2018, "Validating Bayesian inference algorithms with simulation-based
  calibration"): r_md = #{s : samples[m, s, d] < truth[m, d]} in 0..S. If the truth is drawn from the
  prior and the observation from the likelihood, an exact posterior gives ranks uniform on 0..S.
  Uniformity is tested per dimension with Pearson's chi-square on `bins` equal bins of r / (S + 1).
- Central-interval coverage at level q: fraction of m with truth inside the [(1-q)/2, (1+q)/2] sample
  quantiles; expected q.
- Against an exact Gaussian posterior (mean mu, std s): standardized mean error |mean(samples) - mu| / s
  and std ratio std(samples) / s, per observation and dimension.
"""
from __future__ import annotations

import numpy as np
from scipy import stats


def sbc_ranks(samples: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(M, D) ranks of the truth among the samples, in 0..S."""
    return (samples < truth[:, None, :]).sum(axis=1)


def rank_uniformity_pvalues(ranks: np.ndarray, n_samples: int, bins: int = 10) -> np.ndarray:
    """(D,) chi-square p-values of 'ranks are uniform on 0..n_samples', one per dimension."""
    u = (ranks + 0.5) / (n_samples + 1)
    counts = np.stack([np.histogram(u[:, d], bins=bins, range=(0.0, 1.0))[0] for d in range(ranks.shape[1])])
    return np.array([stats.chisquare(c).pvalue for c in counts])


def interval_coverage(samples: np.ndarray, truth: np.ndarray, level: float) -> np.ndarray:
    """(D,) fraction of observations whose truth lies in the central `level` interval of its samples."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"interval level must be in (0, 1), got {level}")
    lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2], axis=1)
    return ((truth >= lo) & (truth <= hi)).mean(axis=0)


def gaussian_posterior_errors(samples: np.ndarray, mean: np.ndarray, std: np.ndarray) -> dict[str, np.ndarray]:
    """Per-dimension averages over observations of |sample mean - mean| / std and sample std / std.
    mean (M, D), std (D,) or (M, D)."""
    err = np.abs(samples.mean(axis=1) - mean) / std
    ratio = samples.std(axis=1) / std
    return {"mean_error": err.mean(axis=0), "std_ratio": ratio.mean(axis=0)}


def summarize(samples: np.ndarray, quantiles: tuple[float, ...] = (0.05, 0.95)) -> dict[str, np.ndarray]:
    """Posterior mean, std and quantiles per observation: each (M, D)."""
    out = {"mean": samples.mean(axis=1), "std": samples.std(axis=1)}
    for q, value in zip(quantiles, np.quantile(samples, quantiles, axis=1)):
        out[f"q{round(q * 100):02d}"] = value
    return out
