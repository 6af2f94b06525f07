r"""Hydrological skill scores of simulated (s) against observed (o) discharge, NumPy, float64.

Every function takes 1-D arrays of equal length, drops the time steps where either is NaN (missing
observations, -999 in CAMELS) and returns NaN when fewer than two valid pairs remain. Formulas follow
NeuralHydrology's `evaluation/metrics.py` (Kratzert et al.), which cites the papers named below.

- NSE (Nash & Sutcliffe 1970): ``1 - sum (s - o)^2 / sum (o - mean o)^2``. 1 is perfect; 0 is as good
  as the observed mean (of the scored period); below 0 worse.
- KGE (Gupta et al. 2009): ``1 - sqrt((r - 1)^2 + (alpha - 1)^2 + (beta - 1)^2)`` with the Pearson
  correlation r, the variability ratio ``alpha = std s / std o`` and the bias ratio
  ``beta = mean s / mean o``.
- alpha-NSE = std s / std o; beta-NSE = (mean s - mean o) / std o (the NSE decomposition of Gupta 2009).
- FHV (Yilmaz et al. 2008), % bias of the peak-flow segment of the flow-duration curve, the highest
  ``h`` = 2% of flows: ``100 sum_h (s_sorted - o_sorted) / sum_h o_sorted``.
- FLV (Yilmaz et al. 2008), % bias of the low-flow segment, the lowest ``l`` = 30% of flows, in logs
  (values floored at 1e-6): with ``QL = sum_l (log Q_l - log Q_min)`` for s and o,
  ``-100 (QL_s - QL_o) / QL_o``.
- Peak timing (Kratzert et al. 2021): observed peaks found with `scipy.signal.find_peaks` (at least
  ``distance`` days apart, prominence >= the std of o); for each, the simulated maximum within
  +-``window`` days; mean absolute offset in days (0 = every peak on the right day).
"""
from __future__ import annotations

import numpy as np
from scipy.signal import find_peaks


def _valid(sim, obs) -> tuple[np.ndarray, np.ndarray]:
    sim, obs = np.asarray(sim, dtype=np.float64).ravel(), np.asarray(obs, dtype=np.float64).ravel()
    if sim.shape != obs.shape:
        raise ValueError(f"simulated and observed series differ in length: {sim.shape} vs {obs.shape}")
    keep = np.isfinite(sim) & np.isfinite(obs)
    return sim[keep], obs[keep]


def nse(sim, obs) -> float:
    s, o = _valid(sim, obs)
    if len(o) < 2 or np.var(o) == 0:
        return float("nan")
    return float(1.0 - np.sum((s - o) ** 2) / np.sum((o - o.mean()) ** 2))


def kge_components(sim, obs) -> dict[str, float]:
    """{"kge", "r", "alpha", "beta"} (see the module docstring)."""
    s, o = _valid(sim, obs)
    if len(o) < 2 or o.std() == 0 or o.mean() == 0:
        return {"kge": float("nan"), "r": float("nan"), "alpha": float("nan"), "beta": float("nan")}
    r = float(np.corrcoef(s, o)[0, 1]) if s.std() > 0 else 0.0
    alpha, beta = float(s.std() / o.std()), float(s.mean() / o.mean())
    return {"kge": float(1.0 - np.sqrt((r - 1) ** 2 + (alpha - 1) ** 2 + (beta - 1) ** 2)), "r": r,
            "alpha": alpha, "beta": beta}


def kge(sim, obs) -> float:
    return kge_components(sim, obs)["kge"]


def alpha_nse(sim, obs) -> float:
    s, o = _valid(sim, obs)
    return float(s.std() / o.std()) if len(o) >= 2 and o.std() > 0 else float("nan")


def beta_nse(sim, obs) -> float:
    s, o = _valid(sim, obs)
    return float((s.mean() - o.mean()) / o.std()) if len(o) >= 2 and o.std() > 0 else float("nan")


def fhv(sim, obs, h: float = 0.02) -> float:
    if not 0 < h < 1:
        raise ValueError(f"FHV fraction h={h} must be in (0, 1)")
    s, o = _valid(sim, obs)
    n = int(np.round(h * len(o)))
    if n < 1:
        return float("nan")
    s_top, o_top = np.sort(s)[::-1][:n], np.sort(o)[::-1][:n]
    return float(100.0 * np.sum(s_top - o_top) / np.sum(o_top)) if np.sum(o_top) > 0 else float("nan")


def flv(sim, obs, l: float = 0.3) -> float:
    if not 0 < l < 1:
        raise ValueError(f"FLV fraction l={l} must be in (0, 1)")
    s, o = _valid(sim, obs)
    n = int(np.round(l * len(o)))
    if n < 2:
        return float("nan")
    s_low = np.log(np.maximum(np.sort(s)[:n], 1e-6))
    o_low = np.log(np.maximum(np.sort(o)[:n], 1e-6))
    ql_s, ql_o = np.sum(s_low - s_low.min()), np.sum(o_low - o_low.min())
    return float(-100.0 * (ql_s - ql_o) / ql_o) if ql_o > 0 else float("nan")


def peak_timing(sim, obs, window: int = 3, distance: int = 100) -> float:
    """Mean |day of the simulated maximum within +-window - day of the observed peak| over observed
    peaks (NaN steps are kept as gaps: peaks next to them are still found on the valid days)."""
    sim, obs = np.asarray(sim, dtype=np.float64).ravel(), np.asarray(obs, dtype=np.float64).ravel()
    if sim.shape != obs.shape:
        raise ValueError(f"simulated and observed series differ in length: {sim.shape} vs {obs.shape}")
    finite = np.isfinite(obs)
    if finite.sum() < 2 * window + 1:
        return float("nan")
    filled = np.where(finite, obs, np.nanmin(obs))
    peaks, _ = find_peaks(filled, distance=distance, prominence=float(np.nanstd(obs)))
    offsets = []
    for p in peaks:
        lo, hi = max(p - window, 0), min(p + window + 1, len(sim))
        seg = sim[lo:hi]
        if not finite[p] or not np.isfinite(seg).any():
            continue
        offsets.append(abs(lo + int(np.nanargmax(seg)) - p))
    return float(np.mean(offsets)) if offsets else float("nan")


METRICS = {"nse": nse, "kge": kge, "alpha_nse": alpha_nse, "beta_nse": beta_nse, "fhv": fhv, "flv": flv,
           "peak_timing": peak_timing}


def all_metrics(sim, obs) -> dict[str, float]:
    """Every metric of `METRICS` plus KGE's r, alpha, beta."""
    out = {name: fn(sim, obs) for name, fn in METRICS.items()}
    comps = kge_components(sim, obs)
    out.update({"kge_r": comps["r"], "kge_alpha": comps["alpha"], "kge_beta": comps["beta"]})
    return out
