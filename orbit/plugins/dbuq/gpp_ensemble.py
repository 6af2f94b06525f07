"""A perturbed-parameter ensemble of the toy land model (orbit/synthetic/land_model.py): 8 parameters drawn
uniformly in `PARAMETERS`' ranges, each run a real run of the model over every vegetated land cell of the
toy-Earth grid (`orbit.data.elm_dataset.make_climate` / `cell_inputs`, 1379 of its 1390 land cells on the default
58 x 116 grid carry vegetation) for `years` years; the output is annual GPP per cell and year (1379 x 30 = 41,370
outputs), the seed's TEM case (1422 cells x 30 years, 8 parameters) on our model.

Parameters (all PFTs at once; names, ranges and units in `PARAMETERS`): multipliers of the light-use
efficiency eps, the specific leaf area SLA, the temperature-response width Tw, the leaf allocation fraction
(the other fractions rescaled so the four still sum to one), the leaf turnover rate, the leaf C:N ratio
(N demand of growth), and of every litter/soil decomposition rate (`K_DECOMP`, N mineralization), plus a
shift of the optimum temperature Topt. Each enters GPP directly (eps, SLA, Topt, Tw) or through leaf area
and nitrogen limitation.

Interannual forcing (years differ; the same for every run): the cycled climatology of `make_climate` plus,
per year y and season s (3-month blocks), a temperature anomaly
  dT[y, s] = TREND (y - (Y - 1)/2) + a[y, s],  a[y] = RHO a[y-1] + sqrt(1 - RHO^2) SD_T n    (n: smooth unit field)
and a soil-moisture anomaly dW[y, s] = SD_W n' (W clipped to [0.02, 1]); radiation follows the moisture
through make_climate's cloud transmissivity tau(W) = clip(0.75 - 0.35 (W - 0.3), 0.35, 0.8),
R_y = R tau(W_y) / tau(W).

Spin-up (the cost that matters): a spin-up to equilibrium takes ~550-1800 model years per cell (AD spin-up,
26 s for all cells at default parameters), far more than the 30 years of a run. So the model is spun up ONCE,
at the default parameters under the cycled climatology (AD, |NEE| < 1 gC m-2 yr-1 for 5 years, ELM's
criterion), and every run starts from that shared state, runs `adjust_years` years of the cycled climatology
with its own parameters (vegetation, litter, the fast soil pool and mineral N adjust to them within a few
years), then the `years` forced years. The slow and passive soil pools stay near the default equilibrium:
GPP is a transient response to the parameters, as in a perturbed-parameter ensemble started from one
spun-up state. Cells whose equilibrium GPP at the default parameters is below `GPP_FLOOR` (no vegetation
survives there; a handful of cold or dry cells) are left out: their GPP is zero up to round-off in every run,
which a per-output score cannot divide by. `adjust_drift` (run) records how settled each run was: the
relative change of the domain-total GPP over the last adjustment year.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from orbit.atomic import write_atomically
from orbit.data.elm_dataset import cell_inputs, make_climate, smooth_field
from orbit.synthetic import land_model as lm
from orbit.synthetic.toy_earth import check_grid

from .problems import Prior, Problem, noise_vector


@dataclass(frozen=True)
class Parameter:
    name: str
    low: float
    high: float
    units: str
    description: str


PARAMETERS = (
    Parameter("lue_scale", 0.75, 1.25, "1", "multiplier of the light-use efficiency eps (gC / MJ PAR)"),
    Parameter("sla_scale", 0.7, 1.3, "1", "multiplier of the specific leaf area SLA (m2 / gC)"),
    Parameter("topt_shift", -4.0, 4.0, "degC", "shift of the GPP optimum temperature Topt"),
    Parameter("twidth_scale", 0.75, 1.25, "1", "multiplier of the GPP temperature-response width Tw"),
    Parameter("leaf_alloc_scale", 0.7, 1.3, "1", "multiplier of the leaf allocation fraction (others rescaled)"),
    Parameter("leaf_turnover_scale", 0.7, 1.4, "1", "multiplier of the leaf turnover rate (yr-1)"),
    Parameter("leaf_cn_scale", 0.8, 1.25, "1", "multiplier of the leaf C:N ratio"),
    Parameter("soil_turnover_scale", 0.5, 2.0, "1", "multiplier of every litter and soil decomposition rate"),
)
NAMES = tuple(p.name for p in PARAMETERS)
TREND, RHO, SD_T, SD_W = 0.03, 0.3, 1.0, 0.05  # degC yr-1, year-to-year autocorrelation, degC, moisture
SEASONS = 4
SPINUP_TOL, SPINUP_WINDOW = 1.0, 5  # gC m-2 yr-1, years
GPP_FLOOR = 10.0  # gC m-2 yr-1: cells below it at equilibrium (vegetation died out) are not vegetated land


def prior() -> Prior:
    return Prior("uniform", [p.low for p in PARAMETERS], [p.high for p in PARAMETERS])


def perturbed_model(forcing: lm.Forcing, site: lm.Site, values: np.ndarray) -> lm.LandModel:
    """The land model with one parameter vector (in `PARAMETERS` order) applied to every PFT."""
    v = dict(zip(NAMES, np.asarray(values, np.float64)))
    base = lm.PftTable
    table = lm.PftTable()
    table.eps = base.eps * v["lue_scale"]
    table.sla = base.sla * v["sla_scale"]
    table.topt = base.topt + v["topt_shift"]
    table.twidth = base.twidth * v["twidth_scale"]
    leaf = base.alloc[:, :1] * v["leaf_alloc_scale"]
    table.alloc = np.concatenate([leaf, base.alloc[:, 1:] * (1.0 - leaf) / (1.0 - base.alloc[:, :1])], axis=1)
    table.turnover = base.turnover * np.array([v["leaf_turnover_scale"], 1.0, 1.0, 1.0])
    table.cn = base.cn * np.array([v["leaf_cn_scale"], 1.0, 1.0, 1.0])
    return lm.LandModel(forcing, site, table, k_decomp=lm.K_DECOMP * v["soil_turnover_scale"])


def transmissivity(moisture: np.ndarray) -> np.ndarray:
    """make_climate's cloud transmissivity of the surface shortwave radiation."""
    return np.clip(0.75 - 0.35 * (moisture - 0.3), 0.35, 0.8)


def yearly_forcing(base: lm.Forcing, grid: tuple[int, int], rows: np.ndarray, cols: np.ndarray, years: int,
                   seed: int) -> list[lm.Forcing]:
    """One forcing per year: the climatology plus the smooth seasonal anomalies of the module docstring."""
    rng = np.random.default_rng([seed, 2])
    sigma = 2.0 * grid[0] / 32.0  # make_climate's noise length scale
    field = lambda: smooth_field(rng, grid, sigma)[rows, cols]  # noqa: E731
    season = np.arange(lm.MONTHS) // (lm.MONTHS // SEASONS)
    anomaly = np.zeros((SEASONS, rows.size))
    out = []
    for y in range(years):
        anomaly = RHO * anomaly + np.sqrt(1 - RHO ** 2) * SD_T * np.stack([field() for _ in range(SEASONS)])
        d_moist = SD_W * np.stack([field() for _ in range(SEASONS)])
        tair = base.tair + TREND * (y - (years - 1) / 2) + anomaly[season].T
        moist = np.clip(base.soil_moisture + d_moist[season].T, 0.02, 1.0)
        radiation = base.radiation * transmissivity(moist) / transmissivity(base.soil_moisture)
        out.append(lm.Forcing(tair, moist, radiation))
    return out


def run_one(values: np.ndarray, state0: np.ndarray, base: lm.Forcing, forcings: list[lm.Forcing], site: lm.Site,
            adjust_years: int) -> tuple[np.ndarray, float]:
    """Annual GPP (cells, years) of one parameter vector from the shared state, and its adjustment drift."""
    state = state0.copy()
    model = perturbed_model(base, site, values)
    totals = [np.nan, np.nan]
    for _ in range(adjust_years):
        state, fluxes = model.run_year(state)
        totals = [totals[1], float(fluxes["gpp"].sum())]
    gpp = np.empty((site.pft.size, len(forcings)), np.float32)
    for y, forcing in enumerate(forcings):
        state, fluxes = perturbed_model(forcing, site, values).run_year(state)
        gpp[:, y] = fluxes["gpp"]
    return gpp, abs(totals[1] - totals[0]) / totals[1] if adjust_years >= 2 else float("nan")


def check_arguments(runs: int, years: int, adjust_years: int) -> None:
    if runs < 2 or years < 1 or adjust_years < 0:
        raise ValueError(f"need runs >= 2, years >= 1, adjust_years >= 0; got runs={runs}, years={years}, "
                         f"adjust_years={adjust_years}")


@dataclass
class Setup:
    """What every run shares: cells (grid rows, cols), climatology, site, yearly forcing, the spun-up state."""

    rows: np.ndarray
    cols: np.ndarray
    climate: xr.Dataset
    base: lm.Forcing
    site: lm.Site
    forcings: list[lm.Forcing]
    state: np.ndarray
    spinup_seconds: float


def shared_setup(grid: tuple[int, int], years: int, seed: int, spinup_tol: float = SPINUP_TOL, log=print) -> Setup:
    """Cells, forcing and the shared AD spin-up at the default parameters (module docstring)."""
    grid = check_grid(grid)
    climate = make_climate(grid, seed)
    rows, cols, base, site = cell_inputs(climate)
    start = time.perf_counter()
    spun = lm.spin_up(lm.LandModel(base, site), lm.cold_start(site.pft.size), tol=spinup_tol, window=SPINUP_WINDOW,
                      max_years=6000, accelerated=True)
    seconds = time.perf_counter() - start
    if (spun.years < 0).any():
        raise RuntimeError(f"shared spin-up: {(spun.years < 0).sum()} cells did not meet |NEE| < {spinup_tol}")
    keep = spun.fluxes["gpp"] >= GPP_FLOOR
    log(f"shared spin-up of {site.pft.size} cells: {seconds:.1f} s (max {spun.years.max()} years); "
        f"{(~keep).sum()} cells without vegetation dropped")
    rows, cols, state = rows[keep], cols[keep], spun.state[keep]
    base = lm.Forcing(base.tair[keep], base.soil_moisture[keep], base.radiation[keep])
    site = lm.Site(site.clay[keep], site.sand[keep], site.pft[keep], site.ndep[keep])
    return Setup(rows, cols, climate, base, site, yearly_forcing(base, grid, rows, cols, years, seed), state, seconds)


def generate(runs: int, grid: tuple[int, int] = (58, 116), years: int = 30, adjust_years: int = 10, seed: int = 0,
             first_year: int = 1991, spinup_tol: float = SPINUP_TOL, log=print) -> xr.Dataset:
    """The ensemble as a dataset: parameters (run, parameter), gpp (run, cell, year); see the module docstring.
    `spinup_tol` (gC m-2 yr-1) of the shared spin-up: a looser one makes quick test ensembles."""
    check_arguments(runs, years, adjust_years)
    setup = shared_setup(grid, years, seed, spinup_tol, log)
    climate, rows, cols, site = setup.climate, setup.rows, setup.cols, setup.site
    x = prior().sample(runs, np.random.default_rng([seed, 1]))
    gpp = np.empty((runs, site.pft.size, years), np.float32)
    drift = np.empty(runs)
    start = time.perf_counter()
    for r in range(runs):
        gpp[r], drift[r] = run_one(x[r], setup.state, setup.base, setup.forcings, site, adjust_years)
        if (r + 1) % 50 == 0 or r + 1 == runs:
            log(f"run {r + 1}/{runs}: {time.perf_counter() - start:.1f} s")
    runs_s = time.perf_counter() - start
    cell = ("cell",)
    ds = xr.Dataset(
        {"parameters": (("run", "parameter"), x, {"long_name": "perturbed parameter values (physical units)"}),
         "gpp": (("run", "cell", "year"), gpp,
                 {"units": "gC m-2 yr-1", "long_name": "annual gross primary production"}),
         "adjust_drift": (("run",), drift, {"units": "1", "long_name": "relative change of total GPP over the "
                                                                       "last adjustment year"}),
         "low": (("parameter",), [p.low for p in PARAMETERS], {"long_name": "uniform prior lower bound"}),
         "high": (("parameter",), [p.high for p in PARAMETERS], {"long_name": "uniform prior upper bound"}),
         "pft": (cell, site.pft.astype(np.int8), {"flag_meanings": " ".join(lm.PFTS)})},
        coords={"run": np.arange(runs), "parameter": list(NAMES), "year": np.arange(first_year, first_year + years),
                "cell_lat": (cell, climate.lat.values[rows], {"units": "degrees_north"}),
                "cell_lon": (cell, climate.lon.values[cols], {"units": "degrees_east"}),
                "parameter_units": (("parameter",), [p.units for p in PARAMETERS]),
                "parameter_description": (("parameter",), [p.description for p in PARAMETERS])})
    ds.attrs.update(
        source="orbit.plugins.dbuq.gpp_ensemble (toy land model, orbit/synthetic/land_model.py)", seed=seed,
        grid="x".join(map(str, check_grid(grid))), adjust_years=adjust_years,
        spinup=f"shared AD spin-up at default parameters, |NEE| < {spinup_tol} gC m-2 yr-1 for {SPINUP_WINDOW} years",
        spinup_seconds=setup.spinup_seconds, runs_seconds=runs_s,
        parameter_ranges="; ".join(f"{p.name} in [{p.low}, {p.high}] {p.units}" for p in PARAMETERS),
        forcing=f"climatology + seasonal smooth anomalies: trend {TREND} degC/yr, AR(1) rho {RHO}, sd_T {SD_T} degC, "
                f"sd_W {SD_W}")
    return ds


def write_ensemble(path: str | Path, runs: int, overwrite: bool = False, **kwargs) -> Path:
    """Generate and write a zarr store atomically (a temporary sibling renamed into place when complete)."""
    path = Path(path)
    check_arguments(runs, kwargs.get("years", 30), kwargs.get("adjust_years", 10))
    if path.exists() and not overwrite:
        raise FileExistsError(f"{str(path)!r} exists; pass --overwrite to replace it")
    ds = generate(runs, **kwargs)
    return write_atomically(path, lambda tmp: ds.to_zarr(tmp, mode="w", zarr_format=2, consolidated=True),
                            overwrite=overwrite)


def open_ensemble(path: str | Path | None) -> xr.Dataset:
    if not path:
        raise ValueError("problem toy_gpp needs data.path: a store written by `orbit dbuq ensemble --out PATH`")
    if not Path(path).exists():
        raise FileNotFoundError(f"GPP ensemble {str(path)!r} not found; create it with "
                                f"`orbit dbuq ensemble --runs 300 --out {path}`")
    ds = xr.open_zarr(path, consolidated=True)
    missing = [v for v in ("parameters", "gpp", "low", "high") if v not in ds]
    if missing:
        raise ValueError(f"{str(path)!r} is not a GPP ensemble store: it lacks {missing}")
    return ds


def load_toy_gpp(path: str | Path | None, sigma) -> Problem:
    """The ensemble as a calibration problem: x (run, parameter), y (run, cell x year) flattened cell-major."""
    ds = open_ensemble(path)
    x = ds.parameters.values.astype(np.float64)
    gpp = ds.gpp.values.astype(np.float64)
    outputs = tuple(f"gpp_c{c}_{y}" for c in range(gpp.shape[1]) for y in ds.year.values)
    return Problem("toy_gpp", x, gpp.reshape(len(x), -1), tuple(str(n) for n in ds.parameter.values), outputs,
                   Prior("uniform", ds.low.values, ds.high.values), noise_vector(sigma, len(outputs), outputs))
