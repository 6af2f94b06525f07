r"""Synthetic basins driven by the toy Earth (`data.weather: toy_earth`), so that the foundation
model's world and the hydrology meet: each basin sits on its own land cell of the toy Earth's
"reanalysis" source (orbit/synthetic/toy_earth.py, run in memory on a coarse grid, (16, 32) by
default) and the conceptual model of synthetic.py turns that cell's daily weather into flow.

Daily drivers at the basin's cell, from the four 6-hourly steps of each UTC day (00..18 UTC):
- ``prcp`` (mm/day) = PRCP_SCALE x sum of ``tp`` (mm per 6 h). The toy Earth rains about
  0.4 mm/day over its land (a fifth of Earth's land mean), too little to move the conceptual
  model's stores, so its precipitation is scaled by PRCP_SCALE = 5 (documented, not tuned);
- ``tmax``, ``tmin`` (degC) = max / min of the four ``t2m`` samples - 273.15, plus the warming trend
  ``warming (year - first year)``. Four samples catch only part of the diurnal cycle (local times
  depend on longitude): the diurnal range is the toy Earth's, sampled 6-hourly (about 1-6 K over
  land), smaller than a true daily max - min;
- ``srad`` (W/m^2): the toy Earth has no radiation output, so the daily-mean top-of-atmosphere
  shortwave (FAO-56 eq. 21, S0 = 1367 W/m^2, the cell's latitude and the day's declination) times a
  transmissivity ``0.75 - 0.4 w``, w the share of the day's 6-h steps with ``tp`` > 0.1 mm (clouds);
- ``vp`` (Pa): vapour pressure of the 850 hPa specific humidity q, ``e = q p / (0.622 + 0.378 q)``
  with p = 85000 Pa (the toy Earth has no surface humidity);
- ``noise``: an i.i.d. N(0, 1) control driver, as in synthetic.py.
Static attributes as synthetic.py, except ``lat`` (the cell's latitude) and ``elev`` (its
orography, km). Basins take distinct land cells with |lat| <= MAX_ABS_LAT (no ice caps), so there
are at most as many basins as such cells (91 on the (16, 32) grid).

With `data.patch: k` (odd) the drivers gain a k x k patch of daily ``prcp`` and daily-mean ``t2m``
(degC, same conversions) centred on the basin's cell (longitude wraps, latitude clamps at the
poles): PATCH_FIELDS x k x k more columns after the point drivers, channel-major, named
``patch_<field>_<i>_<j>``, the gridded stand-in for satellite inputs of family "rs_lstm".
"""
from __future__ import annotations

import numpy as np

from orbit.synthetic import toy_earth

from .basins import BasinSet
from .synthetic import DRIVERS, STATIC, draw_static, runoff

SOURCE = "reanalysis"
PRCP_SCALE = 5.0
MAX_ABS_LAT = 65.0
PATCH_FIELDS = ("prcp", "t2m")
SOLAR_CONSTANT = 1367.0  # W/m^2
P_850 = 85000.0  # Pa


def check_patch(patch: int, grid: tuple[int, int]) -> None:
    """A patch must be 0 (none) or odd and fit in the grid's latitudes (the grid as toy_earth.check_grid)."""
    grid = toy_earth.check_grid(tuple(grid))
    if patch < 0 or (patch and (patch % 2 == 0 or patch > grid[0])):
        raise ValueError(f"data.patch={patch} is not valid: use 0 (no patch) or an odd size k <= {grid[0]} (the grid's "
                         f"latitude count), e.g. 3 or 5")


def daily_fields(grid: tuple[int, int], first_year: int, last_year: int, seed: int) -> dict[str, np.ndarray]:
    """Daily (N_day, H, W) fields of the toy Earth: "prcp" (mm/day, scaled), "tmax", "tmin", "t2m" (degC),
    "wet" (share of wet 6-h steps), "vp" (Pa); plus "dates" (N_day,), "lat" (H,), "land", "orography" (H, W)."""
    fields, statics = toy_earth.generate(SOURCE, (first_year, last_year), tuple(grid), seed)
    n_day = fields.sizes["time"] // 4
    six_hourly = lambda a: np.asarray(a, np.float64).reshape(n_day, 4, *grid)  # noqa: E731
    tp, t2m = six_hourly(fields["tp"].values), six_hourly(fields["t2m"].values) - 273.15
    q = six_hourly(fields["q"].sel(level=850).values)
    return {"prcp": PRCP_SCALE * tp.sum(1), "tmax": t2m.max(1), "tmin": t2m.min(1), "t2m": t2m.mean(1),
            "wet": (tp > 0.1).mean(1), "vp": (q * P_850 / (0.622 + 0.378 * q)).mean(1),
            "dates": fields["time"].values[::4].astype("datetime64[D]"), "lat": toy_earth.grid_coords(grid)[0],
            "land": statics["land_sea_mask"].values > 0, "orography": statics["orography"].values.astype(np.float64)}


def toa_shortwave(lat_deg: np.ndarray, dates: np.ndarray) -> np.ndarray:
    """Daily-mean top-of-atmosphere shortwave (W/m^2), (N, T) for latitudes (N,) (FAO-56 eqs. 21-25):
    ``(S0 / pi) d_r (w_s sin(phi) sin(delta) + cos(phi) cos(delta) sin(w_s))``."""
    doy = (dates - dates.astype("datetime64[Y]")).astype(int) + 1
    phi = np.deg2rad(lat_deg)[:, None]
    dr = 1 + 0.033 * np.cos(2 * np.pi * doy / 365)
    delta = 0.409 * np.sin(2 * np.pi * doy / 365 - 1.39)
    ws = np.arccos(np.clip(-np.tan(phi) * np.tan(delta), -1, 1))
    return SOLAR_CONSTANT / np.pi * dr * (ws * np.sin(phi) * np.sin(delta) + np.cos(phi) * np.cos(delta) * np.sin(ws))


def basin_cells(land: np.ndarray, lat: np.ndarray, n_basins: int, rng: np.random.Generator) -> np.ndarray:
    """(N, 2) distinct (lat, lon) indices of land cells with |lat| <= MAX_ABS_LAT, drawn at random."""
    cells = np.argwhere(land & (np.abs(lat) <= MAX_ABS_LAT)[:, None])
    if n_basins > len(cells):
        raise ValueError(f"data.n_basins={n_basins}: the toy Earth grid {land.shape} has only {len(cells)} land cells "
                         f"with |lat| <= {MAX_ABS_LAT}; use at most {len(cells)} or a finer data.toy_grid")
    return cells[np.sort(rng.choice(len(cells), n_basins, replace=False))]


def patches(field: np.ndarray, cells: np.ndarray, k: int) -> np.ndarray:
    """(N, T, k, k) windows of a daily field (T, H, W) centred on each cell; lon wraps, lat clamps."""
    h, w = field.shape[1:]
    offsets = np.arange(k) - k // 2
    rows = np.clip(cells[:, 0, None] + offsets, 0, h - 1)                        # (N, k)
    cols = (cells[:, 1, None] + offsets) % w                                      # (N, k)
    return field[:, rows[:, :, None], cols[:, None, :]].transpose(1, 0, 2, 3)


def toy_earth_basins(n_basins: int, first_year: int, last_year: int, warming: float = 0.03, seed: int = 0,
                     grid: tuple[int, int] = (16, 32), patch: int = 0) -> BasinSet:
    """`n_basins` basins on toy-Earth land cells from Jan 1 of `first_year` to Dec 31 of `last_year`,
    after a spin-up year (first_year - 1) that is simulated but not recorded; gauge ids 't0000', ...
    `truth` holds "melt", "soil" and "cell" (N, 2: lat, lon index of the basin's cell)."""
    check_patch(patch, grid)
    grid = tuple(grid)
    if n_basins < 1 or last_year < first_year:
        raise ValueError(f"need n_basins >= 1 and last_year >= first_year; got {n_basins}, {first_year}..{last_year}")
    f = daily_fields(grid, first_year - 1, last_year, seed)
    rng = np.random.default_rng([seed, 31])
    cells = basin_cells(f["land"], f["lat"], n_basins, rng)
    static = draw_static(n_basins, rng)
    static[:, 0] = f["lat"][cells[:, 0]]
    static[:, 1] = f["orography"][cells[:, 0], cells[:, 1]] / 1000.0
    dates = f["dates"]
    at = lambda name: f[name][:, cells[:, 0], cells[:, 1]].T  # noqa: E731  (N, T)
    years = dates.astype("datetime64[Y]").astype(int) + 1970
    trend = warming * np.maximum(years - first_year, 0)[None, :]
    srad = toa_shortwave(static[:, 0], dates) * (0.75 - 0.4 * at("wet"))
    drivers = np.stack([at("prcp"), at("tmax") + trend, at("tmin") + trend, srad, at("vp"),
                        rng.normal(size=(n_basins, len(dates)))], axis=-1)
    states = runoff(static, drivers)
    flow = states["flow"] * np.exp(rng.normal(0, 0.05, states["flow"].shape))
    names = list(DRIVERS)
    if patch:
        grids = {"prcp": f["prcp"], "t2m": f["t2m"] + warming * np.maximum(years - first_year, 0)[:, None, None]}
        cube = np.stack([patches(grids[name], cells, patch) for name in PATCH_FIELDS], axis=2)  # (N, T, C, k, k)
        drivers = np.concatenate([drivers, cube.reshape(n_basins, len(dates), -1)], axis=-1)
        names += [f"patch_{name}_{i}_{j}" for name in PATCH_FIELDS for i in range(patch) for j in range(patch)]
    keep = dates >= np.datetime64(f"{first_year}-01-01")
    truth = {k: v[:, keep] for k, v in states.items() if k != "flow"}
    return BasinSet([f"t{i:04d}" for i in range(n_basins)], dates[keep], drivers[:, keep].astype(np.float32), names,
                    flow[:, keep], static.astype(np.float32), list(STATIC), {**truth, "cell": cells})
