r"""Prediction intervals for streamflow forecasts with PI3NN (orbit/plugins/pi3nn; Liu et al., ICLR 2022):
three networks of the run's model family, trained as three phases of the one trainer,

1. mean f: the run's loss (NSE* or MSE) on the flow;
2. upper u > 0: MSE of u against q - f on the samples with q >= f (f detached: only u learns);
3. lower l > 0: MSE of l against f - q on the samples with q < f;

with u, l = sqrt(z^2 + eps) (the PI3NN plug-in's output transform), then step 4 of the PI3NN plug-in
(`IntervalCalibrator`): U = f + alpha u, L = f - beta l with alpha, beta set per lead by bisection so
that exactly floor(N (1 - gamma) / 2) of N calibration samples lie above U and as many below L.
Calibration uses the validation period (residuals the mean network was not fitted to), so the
test-period coverage checks whether the intervals hold where conditions change (a warmer climate).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from orbit.models.registry import register_family
from orbit.plugins.pi3nn.intervals import IntervalCalibrator, picp

from .models import Sizes, StreamflowLSTM, example_inputs

EPS = 1e-2


class IntervalForecaster(nn.Module):
    """Three networks of one streamflow family -> (B, 3, H): [f, u, l] per lead (normalised units)."""

    def __init__(self, mean: nn.Module, upper: nn.Module, lower: nn.Module):
        super().__init__()
        self.mean, self.upper, self.lower = mean, upper, lower

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        positive = lambda z: torch.sqrt(z * z + EPS)  # noqa: E731
        return torch.stack([self.mean(*inputs), positive(self.upper(*inputs)), positive(self.lower(*inputs))], dim=1)


def _example():
    sizes = Sizes(drivers=3, static=2, seq_len=6, horizon=2)
    return IntervalForecaster(*(StreamflowLSTM(sizes, hidden=4) for _ in range(3))), example_inputs(sizes)


register_family("streamflow_pi3nn", IntervalForecaster, example=_example)


def one_sided_loss(output: torch.Tensor, y: torch.Tensor, side: int) -> torch.Tensor:
    """Phase 2 (side=1, u against q - f where q >= f) or 3 (side=2, l against f - q where q < f)."""
    residual = (y - output[:, 0].detach()) * (1.0 if side == 1 else -1.0)
    keep = torch.isfinite(residual) & ((residual >= 0) if side == 1 else (residual > 0))
    error = (output[:, side] - torch.nan_to_num(residual)) ** 2
    return (error * keep).sum() / keep.sum().clamp(min=1)


def calibrators(f: np.ndarray, u: np.ndarray, l: np.ndarray, q: np.ndarray) -> list[IntervalCalibrator]:
    """One PI3NN step-4 calibrator per lead from (N_basin, n_t0, H) arrays (normalised; NaN q left out)."""
    out = []
    for h in range(f.shape[-1]):
        seen = np.isfinite(q[..., h])
        out.append(IntervalCalibrator(q[..., h][seen], f[..., h][seen], u[..., h][seen], l[..., h][seen]))
    return out


def bounds(cals: list[IntervalCalibrator], f, u, l, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    lower, upper = np.empty_like(f), np.empty_like(f)
    for h, cal in enumerate(cals):
        lower[..., h], upper[..., h] = cal.bounds(f[..., h], u[..., h], l[..., h], gamma)
    return lower, upper


def interval_scores(obs: np.ndarray, pred: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                    years: np.ndarray) -> dict[str, Any]:
    """Coverage (PICP), mean width and RMSE (mm/day) of lead 1 overall and per calendar year of the
    target day, and the Spearman correlations of mean width with RMSE over basins and over years (do
    intervals widen where errors grow, across places and as the climate changes?)."""
    from scipy.stats import spearmanr

    o, p, lo, hi = (a[..., 0] for a in (obs, pred, lower, upper))
    seen = np.isfinite(o)
    rows = []
    for year in np.unique(years):
        m = seen & (years == year)[None, :]
        rows.append({"year": int(year), "picp": picp(o[m], lo[m], hi[m]), "width": float(np.mean(hi[m] - lo[m])),
                     "rmse": float(np.sqrt(np.mean((p[m] - o[m]) ** 2)))})
    width_b = np.array([np.mean((hi - lo)[b][seen[b]]) for b in range(len(o))])
    rmse_b = np.array([np.sqrt(np.mean((p - o)[b][seen[b]] ** 2)) for b in range(len(o))])
    rho = float(spearmanr(width_b, rmse_b)[0]) if len(o) > 2 else None
    rho_years = float(spearmanr([r["width"] for r in rows], [r["rmse"] for r in rows])[0]) if len(rows) > 2 else None
    return {"picp": picp(o[seen], lo[seen], hi[seen]), "width": float(np.mean((hi - lo)[seen])),
            "by_year": rows, "spearman_width_rmse_over_basins": rho, "spearman_width_rmse_over_years": rho_years}
