"""Per-basin, per-lead scores of a model's held-out forecasts and of the two reference forecasts:

- persistence: the flow observed on the issue day, for every lead (gauged basins only: an
  ungauged basin has no observation to persist);
- climatology: the day-of-year mean flow of the training period (31-day circular moving mean),
  the basin's own where it is gauged, else the mean climatology of the training basins.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from orbit.metrics.hydrology import all_metrics

from .basins import BasinSet


def doy_climatology(flow: np.ndarray, dates: np.ndarray, window: int = 31) -> np.ndarray:
    """(N, 366) day-of-year mean of `flow` (N, T), smoothed by a circular `window`-day mean."""
    doy = (dates - dates.astype("datetime64[Y]")).astype(int)
    sums, counts = np.zeros((len(flow), 366)), np.zeros((len(flow), 366))
    seen = np.isfinite(flow)
    np.add.at(sums.T, doy, np.where(seen, flow, 0).T)
    np.add.at(counts.T, doy, seen.T.astype(float))
    kernel = np.ones(window)
    wrap = lambda a: np.stack([np.convolve(np.concatenate([r[-window:], r, r[:window]]), kernel, "same")  # noqa: E731
                               [window:-window] for r in a])
    with np.errstate(invalid="ignore"):
        return wrap(sums) / wrap(counts)


def climatology(data: BasinSet, train_days: tuple[int, int], train_rows: np.ndarray, rows: np.ndarray,
                t0: np.ndarray, horizon: int, gauged: bool) -> np.ndarray:
    """(len(rows), len(t0), horizon) climatological forecasts (module docstring)."""
    days = slice(train_days[0], train_days[1] + 1)
    if gauged:
        table = doy_climatology(data.flow[rows, days], data.dates[days])
    else:
        table = np.repeat(np.nanmean(doy_climatology(data.flow[train_rows, days], data.dates[days]), axis=0,
                                     keepdims=True), len(rows), axis=0)
    target = t0[:, None] + np.arange(1, horizon + 1)
    doy = (data.dates[target] - data.dates[target].astype("datetime64[Y]")).astype(int)
    return table[:, doy]


def persistence(data: BasinSet, rows: np.ndarray, t0: np.ndarray, horizon: int) -> np.ndarray:
    return np.repeat(data.flow[rows][:, t0][..., None], horizon, axis=-1)


def _clean(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)


def score_split(family: str, p: dict[str, np.ndarray], data: BasinSet, train_days: tuple[int, int],
                train_rows: np.ndarray, gauged: bool, references: dict[str, np.ndarray] | None = None
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(median over basins {forecaster: {metric: [per lead]}}, {forecaster: {basin: {metric: [per lead]}}});
    `references`: further forecasts shaped as p["pred"] scored alike (the calibrated conceptual model)."""
    horizon = p["pred"].shape[-1]
    forecasts = {family: p["pred"],
                 "climatology": climatology(data, train_days, train_rows, p["rows"], p["t0"], horizon, gauged)}
    if gauged:
        forecasts["persistence"] = persistence(data, p["rows"], p["t0"], horizon)
    forecasts.update(references or {})
    median, per_basin = {}, {}
    for name, forecast in forecasts.items():
        table = {data.basins[r]: {} for r in p["rows"]}
        for i, r in enumerate(p["rows"]):
            by_lead = [all_metrics(forecast[i, :, h], p["obs"][i, :, h]) for h in range(horizon)]
            table[data.basins[r]] = {m: [_clean(s[m]) for s in by_lead] for m in by_lead[0]}
        per_basin[name] = table
        metrics = next(iter(table.values())).keys()
        median[name] = {m: [_clean(np.nanmedian([np.nan if v[m][h] is None else v[m][h] for v in table.values()]))
                            for h in range(horizon)] for m in metrics}
    return median, per_basin
