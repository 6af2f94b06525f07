r"""The process-based baseline: the conceptual rainfall-runoff model of `synthetic.py` (HBV-like,
Bergstroem 1976; Seibert & Vis 2012) with free parameters, calibrated per basin on the training period,
as the seed compares the data-driven models with a calibrated process model (VIC).

- Parameters and search bounds (`BOUNDS`): field capacity ``fc`` (mm), recharge exponent ``beta``,
  ET limit ``lp`` (fraction of fc), degree-day factor ``ddf`` (mm/degC/day), snow threshold ``tt``
  (degC), fast-store fraction ``phi``, recession constants ``k1``, ``k2`` (1/day), unit-hydrograph
  base ``maxbas`` (days). The bounds hold every value the synthetic generator draws.
- Calibration: `scipy.optimize.differential_evolution` (Storn & Price 1997; latin-hypercube start,
  fixed seed, ``generations`` x ``popsize`` x 9 model runs at most, no gradient polish), minimising
  1 - NSE or 1 - KGE (formulas of `orbit.metrics.hydrology`) over the training-period days with
  observed flow, leaving out the first ``spinup`` days of the record while the stores fill. The
  whole population of a generation is simulated in one vectorised pass (`synthetic.simulate`).
  Validation and test flow are never seen; the simulation runs on from the start of the record
  (drivers only) so that the stores are warm when a scored period begins.
- Ungauged basins (split=basins) have no flow to calibrate on: they take the parameters of the
  nearest calibrated training basin in static-attribute space (Euclidean distance of the attributes
  z-scored over the training basins), the "physical similarity" donor of Oudin et al. (2008).

On the synthetic basins this model is the generator's own structure (only the 5% observation noise
and the parameter search stand between it and the truth), so there it is close to an upper bound,
not a competitor; on CAMELS basins it is a real baseline.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import differential_evolution

from .basins import BasinSet
from .synthetic import model_forcing, simulate

BOUNDS = {"fc": (50.0, 600.0), "beta": (1.0, 7.0), "lp": (0.3, 1.0), "ddf": (0.5, 7.0), "tt": (-2.0, 2.0),
          "phi": (0.05, 0.95), "k1": (0.05, 0.8), "k2": (0.001, 0.1), "maxbas": (1.0, 6.0)}
FORCING = ("prcp", "tmax", "tmin", "srad")


def nse_many(sims: np.ndarray, obs: np.ndarray) -> np.ndarray:
    """NSE (M,) of M simulations (M, T) against observations (T,) without missing values."""
    return 1.0 - ((sims - obs) ** 2).sum(axis=1) / ((obs - obs.mean()) ** 2).sum()


def kge_many(sims: np.ndarray, obs: np.ndarray) -> np.ndarray:
    """KGE (M,) = 1 - sqrt((r - 1)^2 + (alpha - 1)^2 + (beta - 1)^2), as `orbit.metrics.hydrology.kge`."""
    s_std = sims.std(axis=1)
    cov = ((sims - sims.mean(axis=1, keepdims=True)) * (obs - obs.mean())).mean(axis=1)
    r = np.where(s_std > 0, cov / np.where(s_std > 0, s_std, 1.0) / obs.std(), 0.0)
    alpha, beta = s_std / obs.std(), sims.mean(axis=1) / obs.mean()
    return 1.0 - np.sqrt((r - 1) ** 2 + (alpha - 1) ** 2 + (beta - 1) ** 2)


OBJECTIVES = {"nse": nse_many, "kge": kge_many}


@dataclass
class Calibration:
    params: dict[str, float]
    score: float  # the objective on the training days
    runs: int  # model runs the optimiser made


def check_settings(objective: str, generations: int, popsize: int, spinup: int) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"conceptual objective {objective!r} is not valid; use one of {sorted(OBJECTIVES)}")
    if generations < 1 or popsize < 1 or spinup < 0:
        raise ValueError(f"the conceptual calibration needs generations >= 1, popsize >= 1 and spinup >= 0; got "
                         f"generations={generations}, popsize={popsize}, spinup={spinup}")


def check_drivers(names: list[str]) -> None:
    missing = [name for name in FORCING if name not in names]
    if missing:
        raise ValueError(f"the conceptual baseline needs drivers {list(FORCING)}; {missing} are not among the "
                         f"data's drivers {names} (add them to data.drivers)")


def basin_forcing(data: BasinSet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prcp, temp, pet) (N, T) float64 of every basin, from the drivers prcp, tmax, tmin, srad."""
    check_drivers(data.driver_names)
    columns = [data.driver_names.index(name) for name in FORCING]
    return model_forcing(data.drivers[..., columns].astype(np.float64))


def as_params(x: np.ndarray) -> dict[str, np.ndarray]:
    """{name: (M,)} from candidate vectors x (9, M) in the order of BOUNDS."""
    return {name: np.atleast_1d(x[i]) for i, name in enumerate(BOUNDS)}


def calibrate(forcing: tuple[np.ndarray, np.ndarray, np.ndarray], obs: np.ndarray, scored: np.ndarray,
              objective: str = "nse", generations: int = 40, popsize: int = 10, seed: int = 0) -> Calibration:
    """Parameters of one basin maximising `objective` on the days `scored` (bool (T,), observed flow
    only): forcing (1, T) arrays and obs (T,) from the start of the record to the last scored day."""
    check_settings(objective, generations, popsize, 0)
    days = scored & np.isfinite(obs)
    if days.sum() < 2:
        raise ValueError(f"the conceptual calibration needs at least 2 observed days to score; got {int(days.sum())}")
    target, score = obs[days], OBJECTIVES[objective]
    runs = 0

    def loss(x: np.ndarray) -> np.ndarray:
        nonlocal runs
        x = x.reshape(len(BOUNDS), -1)
        runs += x.shape[1]
        flow = simulate(as_params(x), *forcing)["flow"][:, days]
        return 1.0 - np.nan_to_num(score(flow, target), nan=-1e6)

    # tol=0: every generation of the budget runs (a fixed budget, the same for every basin)
    result = differential_evolution(loss, list(BOUNDS.values()), maxiter=generations, popsize=popsize, seed=seed,
                                    init="latinhypercube", polish=False, vectorized=True, updating="deferred",
                                    tol=0.0)
    return Calibration({k: float(v) for k, v in zip(BOUNDS, result.x)}, float(1.0 - result.fun), runs)


def nearest_donors(static: np.ndarray, targets: np.ndarray, donors: np.ndarray) -> np.ndarray:
    """For each row in `targets`, the row of `donors` nearest in static attributes z-scored over the donors."""
    mean, std = static[donors].mean(axis=0), static[donors].std(axis=0)
    z = (static - mean) / np.where(std > 0, std, 1.0)
    distance = ((z[targets][:, None, :] - z[donors][None, :, :]) ** 2).sum(axis=-1)
    return donors[distance.argmin(axis=1)]


def conceptual_baseline(data: BasinSet, train_days: tuple[int, int], train_rows: np.ndarray, rows: np.ndarray,
                        gauged: bool, objective: str = "nse", generations: int = 40, popsize: int = 10,
                        spinup: int = 365, seed: int = 0) -> tuple[dict[int, np.ndarray], dict[str, Any]]:
    """({row: simulated flow (T,) over the whole record} for every row in `rows`, a summary for
    summary.json). Gauged: each row calibrated on its own training period; ungauged: every training
    row calibrated, each of `rows` simulated with its nearest donor's parameters (module docstring)."""
    check_settings(objective, generations, popsize, spinup)
    first, last = train_days
    if spinup > last:
        raise ValueError(f"conceptual spinup={spinup} days leaves no training day to calibrate on (the training "
                         f"period ends on day {last} of the record)")
    prcp, temp, pet = basin_forcing(data)
    scored = np.zeros(last + 1, dtype=bool)
    scored[max(first, spinup):] = True
    start = time.time()
    calibrated = np.unique(rows) if gauged else np.asarray(train_rows)
    fits = {}
    for row in calibrated:
        forcing = (prcp[row:row + 1, :last + 1], temp[row:row + 1, :last + 1], pet[row:row + 1, :last + 1])
        fits[int(row)] = calibrate(forcing, data.flow[row, :last + 1], scored, objective, generations, popsize, seed)
    seconds = time.time() - start
    donors = {int(r): int(r) for r in rows} if gauged else \
        {int(r): int(d) for r, d in zip(rows, nearest_donors(data.static, np.asarray(rows), calibrated))}
    sims = {}
    for row, donor in donors.items():
        params = {k: np.array([v]) for k, v in fits[donor].params.items()}
        sims[row] = simulate(params, prcp[row:row + 1], temp[row:row + 1], pet[row:row + 1])["flow"][0]
    info = {"objective": objective, "generations": generations, "popsize": popsize, "spinup_days": spinup,
            "seed": seed, "optimiser": "scipy.optimize.differential_evolution",
            "regionalisation": "own calibration (gauged)" if gauged else
            "nearest training basin in z-scored static attributes",
            "calibrated_basins": len(fits), "calibration_seconds": round(seconds, 1),
            "model_runs": int(sum(f.runs for f in fits.values())),
            "train_objective_median": float(np.median([f.score for f in fits.values()])),
            "parameters": {data.basins[r]: f.params for r, f in fits.items()},
            "train_objective": {data.basins[r]: f.score for r, f in fits.items()},
            "donors": {data.basins[r]: data.basins[d] for r, d in donors.items()}}
    return sims, info
