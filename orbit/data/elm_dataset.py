"""Training set of the ELM spin-up emulator: per land cell, forcing + site + maps in, spun-up equilibrium out.

Geography (land mask, orography) is the toy Earth's (`orbit.synthetic.toy_earth.make_statics`); the climate is
derived from latitude, elevation and continentality plus smooth random fields (`n_k`, unit std):
  annual mean T = -16 + 44 cos(lat) - 0.0065 z + 2.5 n1  [degC]; seasonal amplitude
  (1.5 + 18 |sin lat|^1.2)(0.6 + 0.6 c) with continentality c (smoothed land mask), coldest in January
  (north) / July (south); soil moisture: ITCZ-wet, subtropics-dry, wetter mid-latitudes + 0.12 n2, monsoon
  season in the tropics; radiation = daily-mean top-of-atmosphere insolation x cloud transmissivity.
  Each month also gets small white noise (0.5 degC, 0.02 moisture), so no two cells share a series.
  clay, sand, N deposition are smooth random fields; the PFT follows the climate (dry -> grass,
  warm -> tropical, cold -> boreal, else temperate). Cells colder than -10 degC (ice) are left out.
The equilibrium is the land model's AD spin-up to a strict criterion (|NEE| < `tol` for `window` years in
both phases) — close enough to a fixed point that one more year changes no pool by more than ~0.1 gC m-2.
Held-out cells are whole regions (`block` x `block` grid cells; 16 on the 64x128 grid): a share `holdout` of
the regions is the test set (reported once), a share `validation` the validation set (every choice), and the
land cells within `buffer` cells (Chebyshev distance, periodic in longitude) of a held-out region that are not
held out themselves are dropped. Why: the random fields are smoothed with a Gaussian of 2 cells per 32 rows
(sigma = 4 cells on 64x128), so a training cell next to a test cell shares most of its noise; the default
buffer of 4 cells (one sigma) keeps the nearest training cell at least 5 cells away, and the test region's
interior much further. `site_copies` adds, per training cell, that many extra training sites under the same forcing
with perturbed clay, sand and N deposition (as a site-level ensemble would), each spun up like the
originals: the equilibrium depends on those properties, and 1-2 thousand cells cover them thinly.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import xarray as xr
from scipy import ndimage

from orbit.atomic import write_atomically
from orbit.synthetic import land_model as lm
from orbit.synthetic.toy_earth import check_grid, make_statics

SOLAR_CONSTANT = 1361.0  # W m-2
ICE_TMEAN = -10.0  # degC: colder cells are ice sheets, without vegetation
FORCING_VARS = ("tair", "soil_moisture", "radiation")
SITE_VARS = ("clay", "sand", "ndep", "elevation", "latitude")
MAP_VARS = ("orography", "land_sea_mask", "tmean", "wmean")  # the cell's own site values come as statics
VAR_ATTRS = {
    "tair": {"units": "degC", "long_name": "monthly mean air/soil temperature (cycled climatology)"},
    "soil_moisture": {"units": "1", "long_name": "monthly relative soil moisture"},
    "radiation": {"units": "W m-2", "long_name": "monthly mean surface shortwave radiation"},
    "clay": {"units": "1", "long_name": "soil clay fraction"},
    "sand": {"units": "1", "long_name": "soil sand fraction"},
    "ndep": {"units": "gN m-2 yr-1", "long_name": "nitrogen deposition"},
    "elevation": {"units": "m", "long_name": "surface height"},
    "latitude": {"units": "degrees_north", "long_name": "cell latitude"},
    "pft": {"units": "1", "long_name": "plant functional type index", "flag_meanings": " ".join(lm.PFTS)},
    "tmean": {"units": "degC", "long_name": "annual mean temperature"},
    "wmean": {"units": "1", "long_name": "annual mean relative soil moisture"},
    "orography": {"units": "m", "long_name": "surface height above sea level"},
    "land_sea_mask": {"units": "1", "long_name": "land-sea mask (1 = land)"},
}


def smooth_field(rng: np.random.Generator, grid: tuple[int, int], sigma_cells: float) -> np.ndarray:
    """A smooth random field with unit standard deviation: white noise blurred (periodic in longitude)."""
    field = ndimage.gaussian_filter(rng.standard_normal(grid), sigma_cells, mode=("nearest", "wrap"))
    return (field - field.mean()) / field.std()


def insolation(lat_deg: np.ndarray, month: np.ndarray) -> np.ndarray:
    """Daily-mean top-of-atmosphere insolation (W m-2) at mid-month: lat (...), month (12,) -> (..., 12)."""
    doy = (np.asarray(month) + 0.5) * 365.25 / 12
    decl = np.deg2rad(23.44) * np.sin(2 * np.pi * (doy - 80.0) / 365.25)
    phi = np.deg2rad(lat_deg)[..., None]
    h0 = np.arccos(np.clip(-np.tan(phi) * np.tan(decl), -1.0, 1.0))
    return SOLAR_CONSTANT / np.pi * (h0 * np.sin(phi) * np.sin(decl) + np.cos(phi) * np.cos(decl) * np.sin(h0))


def make_climate(grid: tuple[int, int], seed: int) -> xr.Dataset:
    """Maps (lat, lon) of statics and climate, and the monthly forcing (lat, lon, month), for every cell."""
    rng = np.random.default_rng(seed)
    statics = make_statics(grid)
    lat = statics.lat.values.astype(np.float64)
    lat2d = np.broadcast_to(lat[:, None], grid)
    z = statics.orography.values.astype(np.float64)
    land = statics.land_sea_mask.values.astype(np.float64)
    cells = grid[0] / 32.0  # noise length scales are set on the 32 x 64 grid
    n1, n2, n3, n4, n5 = (smooth_field(rng, grid, 2.0 * cells) for _ in range(5))
    cont = ndimage.gaussian_filter(land, 3.0 * cells, mode=("nearest", "wrap"))
    abs_lat = np.abs(lat2d)
    tmean = -16.0 + 44.0 * np.cos(np.deg2rad(lat2d)) - 0.0065 * z + 2.5 * n1
    amp = (1.5 + 18.0 * np.abs(np.sin(np.deg2rad(lat2d))) ** 1.2) * (0.6 + 0.6 * cont)
    wmean = (0.5 + 0.3 * np.exp(-(lat2d / 12.0) ** 2) - 0.3 * np.exp(-((abs_lat - 25.0) / 9.0) ** 2)
             + 0.1 * np.exp(-((abs_lat - 55.0) / 12.0) ** 2) + 0.12 * n2 - 0.15 * (cont - 0.5))
    wmean = np.clip(wmean, 0.05, 0.95)
    month = np.arange(lm.MONTHS)
    phase = np.cos(2 * np.pi * (month + 0.5) / lm.MONTHS)  # +1 in January
    hemi = np.sign(lat2d)[..., None]
    tair = tmean[..., None] - hemi * amp[..., None] * phase + 0.5 * rng.standard_normal((*grid, lm.MONTHS))
    monsoon = 0.15 * np.exp(-((abs_lat - 12.0) / 10.0) ** 2)
    moist = np.clip(wmean[..., None] - hemi * monsoon[..., None] * phase
                    + 0.02 * rng.standard_normal((*grid, lm.MONTHS)), 0.02, 1.0)
    transmissivity = np.clip(0.75 - 0.35 * (moist - 0.3), 0.35, 0.8)
    radiation = insolation(lat2d, month) * transmissivity
    clay = 0.05 + 0.45 * lm.sigmoid(1.5 * n3)
    sand = (0.05 + 0.8 * lm.sigmoid(1.5 * n4)) * (1.0 - clay)
    ndep = 0.1 + 2.0 * lm.sigmoid(1.5 * n5 - 1.0)
    dims, fdims = ("lat", "lon"), ("lat", "lon", "month")
    return xr.Dataset(
        {"orography": (dims, z), "land_sea_mask": (dims, land), "tmean": (dims, tmean),
         "wmean": (dims, moist.mean(axis=-1)), "clay": (dims, clay), "sand": (dims, sand), "ndep": (dims, ndep),
         "tair": (fdims, tair), "soil_moisture": (fdims, moist), "radiation": (fdims, radiation)},
        coords={"lat": lat, "lon": statics.lon.values.astype(np.float64), "month": month + 1})


def assign_pft(tmean: np.ndarray, wmean: np.ndarray) -> np.ndarray:
    """PFT index by climate: grass where dry, else tropical / boreal / temperate by temperature."""
    pft = np.where(tmean > 20.0, 0, np.where(tmean < 4.0, 2, 1))
    return np.where(wmean < 0.35, 3, pft)


TRAIN, TEST, VALIDATION = 0, 1, 2  # values of the store's `split`
BUFFER = -1  # cells dropped from the store (too close to a held-out region)


def holdout_regions(rows: np.ndarray, cols: np.ndarray, grid: tuple[int, int], block: int, test: float,
                    validation: float, buffer: int, seed: int) -> np.ndarray:
    """(N,) split of the cells at (rows, cols) of `grid`: TEST for every cell of a random share `test` of the
    occupied `block` x `block` regions, VALIDATION for a share `validation` of the others, BUFFER for the
    remaining cells within `buffer` cells (max(|d row|, |d col|), col periodic) of a held-out cell, else TRAIN."""
    if not (0.0 < test and 0.0 <= validation and test + validation < 1.0) or block < 1 or buffer < 0:
        raise ValueError(f"need 0 < test, 0 <= validation, test + validation < 1, block >= 1, buffer >= 0; got "
                         f"{test}, {validation}, {block}, {buffer}")
    tile = (rows // block) * 100_000 + cols // block
    tiles = np.random.default_rng(seed + 1).permutation(np.unique(tile))
    n_test = max(1, round(test * tiles.size))
    n_val = max(1, round(validation * tiles.size)) if validation > 0 else 0
    if n_test + n_val >= tiles.size:
        raise ValueError(f"{tiles.size} occupied {block}x{block} regions leave no training region for "
                         f"{n_test} test and {n_val} validation regions; use a smaller block")
    split = np.full(rows.size, TRAIN, dtype=np.int8)
    split[np.isin(tile, tiles[:n_test])] = TEST
    split[np.isin(tile, tiles[n_test:n_test + n_val])] = VALIDATION
    held = np.zeros(grid, dtype=bool)
    held[rows[split != TRAIN], cols[split != TRAIN]] = True
    near = ndimage.maximum_filter(held, size=2 * buffer + 1, mode=("constant", "wrap"))
    split[(split == TRAIN) & near[rows, cols]] = BUFFER
    return split


def cell_inputs(climate: xr.Dataset) -> tuple[np.ndarray, np.ndarray, lm.Forcing, lm.Site]:
    """Rows, cols of the vegetated land cells, and their land-model forcing and site."""
    land = (climate.land_sea_mask.values > 0.5) & (climate.tmean.values > ICE_TMEAN)
    rows, cols = np.nonzero(land)
    pick = lambda name: climate[name].values[rows, cols]  # noqa: E731
    forcing = lm.Forcing(pick("tair"), pick("soil_moisture"), pick("radiation"))
    site = lm.Site(clay=pick("clay"), sand=pick("sand"), pft=assign_pft(pick("tmean"), pick("wmean")),
                   ndep=pick("ndep"))
    return rows, cols, forcing, site


def perturbed_sites(site: lm.Site, copies: int, seed: int) -> lm.Site:
    """`copies` perturbed versions of every site, stacked copy-major: (copies * N,) arrays. Clay and sand
    move by +-0.08 / +-0.12 (std) within the generator's ranges, N deposition by a factor exp(0.35 n)."""
    rng = np.random.default_rng([seed, 17])
    rep = lambda a: np.tile(a, copies)  # noqa: E731
    noise = lambda: rng.standard_normal(copies * site.clay.size)  # noqa: E731
    clay = np.clip(rep(site.clay) + 0.08 * noise(), 0.05, 0.5)
    sand = np.minimum(np.clip(rep(site.sand) + 0.12 * noise(), 0.04, 0.85), 0.95 - clay)
    ndep = np.clip(rep(site.ndep) * np.exp(0.35 * noise()), 0.1, 2.1)
    return lm.Site(clay=clay, sand=sand, pft=rep(site.pft), ndep=ndep)


def generate(grid: tuple[int, int] = (64, 128), seed: int = 0, tol: float = 0.02, window: int = 5,
             max_years: int = 6000, holdout: float = 0.2, validation: float = 0.1, block: int = 16, buffer: int = 4,
             site_copies: int = 0) -> xr.Dataset:
    """The whole training set as one dataset (dims cell, month, lat, lon); see the module docstring."""
    grid = check_grid(grid)
    if site_copies < 0:
        raise ValueError(f"site_copies must be >= 0 (extra perturbed sites per training cell), got {site_copies}")
    climate = make_climate(grid, seed)
    rows, cols, forcing, site = cell_inputs(climate)
    split = holdout_regions(rows, cols, grid, block, holdout, validation, buffer, seed)
    keep = split != BUFFER
    buffer_cells = int((~keep).sum())
    rows, cols, split = rows[keep], cols[keep], split[keep]
    forcing = lm.Forcing(forcing.tair[keep], forcing.soil_moisture[keep], forcing.radiation[keep])
    site = lm.Site(site.clay[keep], site.sand[keep], site.pft[keep], site.ndep[keep])
    copy = np.zeros(rows.size, dtype=np.int16)
    if site_copies:  # only training cells get copies: held-out blocks stay exactly as they were
        train = np.nonzero(split == TRAIN)[0]
        extra = perturbed_sites(lm.Site(site.clay[train], site.sand[train], site.pft[train], site.ndep[train]),
                                site_copies, seed)
        idx = np.concatenate([np.arange(rows.size), np.tile(train, site_copies)])
        copy = np.concatenate([copy, np.repeat(np.arange(1, site_copies + 1), train.size).astype(np.int16)])
        rows, cols, split = rows[idx], cols[idx], split[idx]
        forcing = lm.Forcing(forcing.tair[idx], forcing.soil_moisture[idx], forcing.radiation[idx])
        site = lm.Site(*(np.concatenate([getattr(site, k), getattr(extra, k)])
                         for k in ("clay", "sand", "pft", "ndep")))
    model = lm.LandModel(forcing, site)
    start = time.perf_counter()
    result = lm.spin_up(model, lm.cold_start(model.n), tol=tol, window=window, max_years=max_years,
                        accelerated=True)
    wall = time.perf_counter() - start
    converged = result.years >= 0
    outputs = lm.equilibrium_outputs(model, result.state, result.fluxes)
    cell = ("cell",)
    data = {name: (cell, value, {"units": lm.output_units(name), "role": "output"}) for name, value in outputs.items()}
    for name in FORCING_VARS:
        data[name] = (("cell", "month"), getattr(forcing, name), VAR_ATTRS[name])
    site_values = {"clay": site.clay, "sand": site.sand, "ndep": site.ndep,
                   "elevation": climate.orography.values[rows, cols], "latitude": climate.lat.values[rows]}
    for name, value in site_values.items():
        data[name] = (cell, value, VAR_ATTRS[name])
    data["pft"] = (cell, site.pft.astype(np.int8), VAR_ATTRS["pft"])
    for name in MAP_VARS:
        data[f"map_{name}"] = (("lat", "lon"), climate[name].values, VAR_ATTRS[name])
    data["row"], data["col"] = (cell, rows.astype(np.int32)), (cell, cols.astype(np.int32))
    data["split"] = (cell, split, {"long_name": "0 = training cell, 1 = test cell, 2 = validation cell"})
    data["site_copy"] = (cell, copy, {"long_name": "0 = the grid cell's own site, k > 0 = k-th perturbed site"})
    data["spinup_years_ad"] = (cell, result.years, {"units": "yr", "long_name": "AD + normal spin-up years used"})
    data["final_nee"] = (cell, result.fluxes["nee"], {"units": "gC m-2 yr-1", "long_name": "NEE of the last year"})
    ds = xr.Dataset(
        {k: xr.Variable(v[0], np.asarray(v[1]), v[2] if len(v) > 2 else {}) for k, v in data.items()},
        coords={"lat": climate.lat.values, "lon": climate.lon.values, "month": climate.month.values,
                "cell_lat": (cell, climate.lat.values[rows], {"units": "degrees_north"}),
                "cell_lon": (cell, climate.lon.values[cols], {"units": "degrees_east"})})
    ds.lat.attrs.update(units="degrees_north", standard_name="latitude")
    ds.lon.attrs.update(units="degrees_east", standard_name="longitude")
    ds.attrs.update(grid=f"{grid[0]}x{grid[1]}", seed=seed, tol_gc_m2_yr=tol, window_years=window,
                    spinup_wall_s=wall, cells=int(model.n), unconverged_cells=int((~converged).sum()),
                    holdout_block=block, buffer_cells_dropped=buffer_cells, buffer=buffer,
                    outputs=" ".join(lm.OUTPUTS))
    return ds.isel(cell=np.nonzero(converged)[0])


def write_dataset(path: str | Path, overwrite: bool = False, **kwargs) -> Path:
    """Generate (see `generate`) and write to a zarr store at `path`."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{str(path)!r} exists; pass overwrite=True (--overwrite) to replace it")
    ds = generate(**kwargs)
    return write_atomically(path, lambda tmp: ds.to_zarr(tmp, mode="w", zarr_format=2, consolidated=True),
                            overwrite=overwrite)


def open_dataset(path: str | Path) -> xr.Dataset:
    """Open a store written by `write_dataset`, with a clear error when it is missing."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"ELM training set {str(path)!r} not found; create it with "
                                f"`orbit data elm --out {path}`")
    return xr.open_zarr(path, consolidated=True)


# --------------------------------------------------------------------------- model-ready arrays
def extract_patches(maps: np.ndarray, rows: np.ndarray, cols: np.ndarray, size: int) -> np.ndarray:
    """maps (C, H, W) -> patches (N, C, size, size) centred on each cell; longitude wraps, latitude
    repeats the edge row (beyond the pole there is no other cell to show)."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"patch size must be a positive odd number of cells, got {size}")
    r = size // 2
    padded = np.pad(maps, ((0, 0), (r, r), (0, 0)), mode="edge")
    offsets = np.arange(-r, r + 1)
    row_idx = (rows[:, None] + r + offsets[None, :])[:, :, None]  # (N, K, 1)
    col_idx = ((cols[:, None] + offsets[None, :]) % maps.shape[2])[:, None, :]  # (N, 1, K)
    return padded[:, row_idx, col_idx].transpose(1, 0, 2, 3)


FEATURE_NAMES = ("xi_mean", "f_temp_mean", "f_moist_mean", "gpp_pot_sum", "npp_pot_sum", "gpp_pot_max",
                 "xi_growing_season", "leach_mean", "denit_mean", "leaf_off_mean", "growing_fraction",
                 "nfix_closed_canopy")


def forcing_features(tair: np.ndarray, moisture: np.ndarray, radiation: np.ndarray, pft: np.ndarray,
                     pfts: lm.PftTable = lm.PFT_TABLE) -> np.ndarray:
    """Annual statistics of the forcing that the equilibrium pools depend on, (N, len(FEATURE_NAMES)), log.

    Why: a linear pool settles at input / (k * mean rate factor) and inputs scale with the year's potential
    production, so these sums of the land model's own rate functions (lm.lloyd_taylor, lm.century_moisture,
    the light/temperature/moisture growth factors) are what a handful of cells must otherwise teach the
    network. `nfix_closed_canopy` is the year's N fixation if fAPAR were 1 (fixation saturates in NPP).
    tair, moisture, radiation: (N, 12) monthly; pft: (N,) indices.
    """
    f_t, f_w = lm.lloyd_taylor(tair), lm.century_moisture(moisture)
    xi = f_t * f_w
    par = 0.5 * radiation * lm.SECONDS_PER_STEP / 1e6
    topt, twidth = pfts.topt[pft][:, None], pfts.twidth[pft][:, None]
    f_growth = (np.exp(-(((tair - topt) / twidth) ** 2)) * lm.sigmoid(tair / 1.5)
                * moisture * 1.15 / (moisture + 0.15))
    gpp_pot = pfts.eps[pft][:, None] * par * f_growth  # per unit fAPAR, gC m-2 per month
    npp_frac = (1.0 - (0.2 + 0.25 * lm.sigmoid((tair - 15.0) / 6.0))) * 0.75
    features = np.stack([
        xi.mean(axis=1), f_t.mean(axis=1), f_w.mean(axis=1), gpp_pot.sum(axis=1), (gpp_pot * npp_frac).sum(axis=1),
        gpp_pot.max(axis=1), (gpp_pot * xi).sum(axis=1) / (gpp_pot.sum(axis=1) + 1e-9),
        (2.0 * moisture**2).mean(axis=1), (0.5 * f_t * moisture**2).mean(axis=1),
        lm.sigmoid((5.0 - tair) / 2.0).mean(axis=1),
        (gpp_pot > 0.1 * gpp_pot.max(axis=1, keepdims=True)).mean(axis=1),
        (1.8 * (1.0 - np.exp(-0.003 * gpp_pot * npp_frac / lm.DT)) * lm.DT).sum(axis=1)], axis=1)
    return np.log(features + 1e-3)


def _zscore(values: np.ndarray, fit: np.ndarray, axis) -> np.ndarray:
    mean = fit.mean(axis=axis, keepdims=True)
    std = np.maximum(fit.std(axis=axis, keepdims=True), 1e-6)
    return (values - mean) / std


class OutputTransform:
    """Equilibrium outputs <-> training space: sqrt(y) for outputs that are never negative, then a z-score,
    all fitted on the training cells.

    Why sqrt and not log: pools span orders of magnitude across cells, which a compressing transform
    evens out, but R² in physical units is dominated by the large values; a log spends the network's
    accuracy on tiny pools (measured: held-out R² min 0.93 with log vs 0.98 with sqrt, same MLP).
    """

    def __init__(self, train_values: np.ndarray):
        """train_values: (N_train, O) in physical units."""
        self.sqrt = train_values.min(axis=0) >= 0
        t = self._pre(train_values)
        self.mean, self.std = t.mean(axis=0), np.maximum(t.std(axis=0), 1e-9)

    def _pre(self, y: np.ndarray) -> np.ndarray:
        return np.where(self.sqrt, np.sqrt(np.maximum(y, 0.0)), y)

    def forward(self, y: np.ndarray) -> np.ndarray:
        return (self._pre(y) - self.mean) / self.std

    def inverse(self, z: np.ndarray) -> np.ndarray:
        t = z * self.std + self.mean
        return np.where(self.sqrt, np.maximum(t, 0.0) ** 2, t)


class ElmArrays:
    """Normalized model inputs and targets of every cell of a store opened with `open_dataset`.

    forcing (N, 12, 3), statics (N, 5 + n_features + n_pft) (z-scored site values and `forcing_features`,
    one-hot PFT), patch (N, len(MAP_VARS), K, K),
    target (N, len(lm.LEARNED_OUTPUTS)) in training space, truth (N, len(lm.OUTPUTS)) physical, ndep (N,)
    physical; `train` / `val` / `test` index arrays from the store's region split (`data_fraction` keeps a
    seeded share of the training cells).
    """

    def __init__(self, ds: xr.Dataset, patch: int, data_fraction: float = 1.0, seed: int = 0):
        missing = [v for v in (*FORCING_VARS, *SITE_VARS, "pft", "split", *lm.OUTPUTS) if v not in ds]
        if missing:
            raise ValueError(f"the ELM store lacks variables {missing}; regenerate it with `orbit data elm`")
        ds = ds.load()
        self.dataset = ds
        split = ds.split.values
        train = np.nonzero(split == TRAIN)[0]
        self.val = np.nonzero(split == VALIDATION)[0]
        self.test = np.nonzero(split == TEST)[0]
        if data_fraction < 1.0:
            keep = max(1, round(data_fraction * train.size))
            train = np.sort(np.random.default_rng(seed).permutation(train)[:keep])
        self.train = train
        forcing = np.stack([ds[v].values for v in FORCING_VARS], axis=-1)
        self.forcing = _zscore(forcing, forcing[train], axis=(0, 1)).astype(np.float32)
        site = np.stack([ds[v].values for v in SITE_VARS], axis=-1)
        site = np.concatenate([site, forcing_features(*(ds[v].values for v in FORCING_VARS),
                                                      ds.pft.values.astype(int))], axis=1)
        one_hot = np.eye(len(lm.PFTS))[ds.pft.values.astype(int)]
        self.statics = np.concatenate([_zscore(site, site[train], axis=0), one_hot], axis=1).astype(np.float32)
        maps = np.stack([ds[f"map_{v}"].values for v in MAP_VARS])
        maps = _zscore(maps, maps[:, ds.row.values[train], ds.col.values[train]][..., None], axis=(1, 2))
        self.patch = extract_patches(maps, ds.row.values, ds.col.values, patch).astype(np.float32)
        self.truth = np.stack([ds[v].values for v in lm.OUTPUTS], axis=1)
        self.ndep = ds.ndep.values.astype(np.float64)
        learned = self.truth[:, [lm.OUTPUTS.index(v) for v in lm.LEARNED_OUTPUTS]]
        self.transform = OutputTransform(learned[train])
        self.target = self.transform.forward(learned).astype(np.float32)

    def __len__(self) -> int:
        return len(self.truth)

    def outputs(self, z: np.ndarray, cells: np.ndarray) -> np.ndarray:
        """Training-space predictions z (M, len(lm.LEARNED_OUTPUTS)) of `cells` (M,) -> every output
        (M, len(lm.OUTPUTS)) in physical units, the derived ones from the equilibrium identities."""
        learned = dict(zip(lm.LEARNED_OUTPUTS, self.transform.inverse(z).T))
        full = lm.derive_outputs(learned, self.ndep[cells])
        return np.stack([full[name] for name in lm.OUTPUTS], axis=1)
