"""Posterior sampling with a trained DBUQ network, for any observation, without retraining.

For an observation y* (physical units), x_k = F([y*, z_k]), z_k ~ N(0, I), k = 1..S, mapped back to
physical units (through logit space for a uniform prior box: `Normalizer`). Observations are checked first:
the right number of outputs, finite values, and a warning when y* lies outside the ensemble's output range by
more than `EXTRAPOLATION_SIGMAS` noise stds (the posterior there is an extrapolation of the network, not of the
ensemble).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy.special import expit, logit

from .problems import Problem

EXTRAPOLATION_SIGMAS = 3.0
BOX_EPS = 1e-6  # runs on a bound of the prior box map to logit(1e-6), not to infinity


class ExtrapolationWarning(UserWarning):
    """An observation outside the range of the prior ensemble's outputs."""


class Normalizer:
    """Ensemble (training runs) mean/std of parameters and outputs; noise in normalized units.

    With `logit_box` and a uniform prior, parameters are standardized in logit space,
    u = logit((x - low) / (high - low)), so that every sample mapped back lies inside the prior box: the
    posterior has no mass outside it, and the blur of early ODE end points (labels.py) would otherwise push
    samples across the bounds (ELM Ozark at ode_t_end 0.2: 58% of samples had a parameter outside)."""

    def __init__(self, problem: Problem, rows: np.ndarray, logit_box: bool = False):
        self.problem = problem
        self.box = (problem.prior.a, problem.prior.b) if logit_box and problem.prior.kind == "uniform" else None
        x, y = self._unbounded(problem.x[rows]), problem.y[rows]
        self.x_mean, self.x_std = x.mean(0), x.std(0)
        self.y_mean, self.y_std = y.mean(0), y.std(0)
        self.y_low, self.y_high = y.min(0), y.max(0)
        self.noise = problem.sigma / self.y_std

    def _unbounded(self, x: np.ndarray) -> np.ndarray:
        if self.box is None:
            return x
        low, high = self.box
        return logit(np.clip((x - low) / (high - low), BOX_EPS, 1.0 - BOX_EPS))

    def xn(self, x: np.ndarray) -> np.ndarray:
        return (self._unbounded(x) - self.x_mean) / self.x_std

    def yn(self, y: np.ndarray) -> np.ndarray:
        return (y - self.y_mean) / self.y_std

    def x_physical(self, xn: np.ndarray) -> np.ndarray:
        x = xn * self.x_std + self.x_mean
        if self.box is None:
            return x
        low, high = self.box
        return low + (high - low) * expit(x)

    def check_observations(self, y_obs: np.ndarray) -> np.ndarray:
        """(M, K) float64 observations, or a ValueError naming what is wrong; warns on extrapolation."""
        y_obs = np.atleast_2d(np.asarray(y_obs, dtype=np.float64))
        k = len(self.problem.outputs)
        if y_obs.ndim != 2 or y_obs.shape[1] != k:
            raise ValueError(f"an observation needs {k} values ({', '.join(self.problem.outputs)}), got shape "
                             f"{tuple(y_obs.shape)}")
        bad = ~np.isfinite(y_obs)
        if bad.any():
            rows = sorted(set(np.nonzero(bad)[0].tolist()))
            raise ValueError(f"observation(s) {rows[:10]} hold NaN or infinite values: {y_obs[rows[0]].tolist()}")
        margin = EXTRAPOLATION_SIGMAS * self.problem.sigma
        outside = (y_obs < self.y_low - margin) | (y_obs > self.y_high + margin)
        if outside.any():
            m, j = np.argwhere(outside)[0]
            warnings.warn(f"{int(outside.any(1).sum())} of {len(y_obs)} observation(s) lie outside the ensemble's "
                          f"output range by more than {EXTRAPOLATION_SIGMAS:g} noise std (e.g. observation {m}, "
                          f"{self.problem.outputs[j]} = {y_obs[m, j]:.4g}, ensemble range [{self.y_low[j]:.4g}, "
                          f"{self.y_high[j]:.4g}]): the posterior there is an extrapolation", ExtrapolationWarning,
                          stacklevel=2)
        return y_obs


def sample_posterior(forward, norm: Normalizer, y_obs: np.ndarray, n_samples: int, seed: int = 0,
                     batch_rows: int = 262144) -> np.ndarray:
    """(M, S, D) posterior samples in physical units for observations y_obs (M, K).

    `forward(y, z)` is the network on normalized float32 tensors (an engine's forward, or the module)."""
    if n_samples < 1:
        raise ValueError(f"the number of samples must be >= 1, got {n_samples}")
    y_obs = norm.check_observations(y_obs)
    m, d = len(y_obs), len(norm.x_mean)
    gen = torch.Generator().manual_seed(seed)
    yn = torch.as_tensor(norm.yn(y_obs), dtype=torch.float32)
    out = np.empty((m, n_samples, d), dtype=np.float64)
    per_chunk = max(1, batch_rows // n_samples)
    with torch.no_grad():
        for start in range(0, m, per_chunk):
            yc = yn[start:start + per_chunk]
            y_rep = yc.repeat_interleave(n_samples, dim=0)
            z = torch.randn(len(y_rep), d, generator=gen)
            xn = forward(y_rep, z).float().cpu().numpy().astype(np.float64)
            out[start:start + len(yc)] = norm.x_physical(xn).reshape(len(yc), n_samples, d)
    return out
