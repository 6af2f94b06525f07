r"""Toy-Earth pairs for downscaling: high-resolution fields and the coarse fields averaged from them.

A downscaling model must add the detail a coarse grid cannot hold. On the real Earth most of that
detail is tied to the surface: mountains are colder and wetter on their windward side and deflect
the wind, coasts separate land that heats and cools fast from a sea that barely moves. This module
makes fields with exactly that kind of detail, cheaply: the toy Earth (`orbit.synthetic.toy_earth`) runs on
the coarse grid, its free-atmosphere state is interpolated to a grid ``s`` times finer, and the
surface fields are diagnosed there from the high-resolution orography ``h`` and land-sea mask
``l``. The coarse fields the model sees are then the conservative (block) averages of the fine
ones, so ``coarse == block_mean(fine)`` holds exactly.

Grids
    Fine: the toy Earth's cell-centred grid of ``(s H, s W)`` cells. Coarse: blocks of ``s x s``
    fine cells, the coarse coordinates being the block means of the fine ones (lat nests exactly
    in the toy Earth's coarse grid; lon is offset by ``(s - 1)/2`` fine cells from it).

Free atmosphere (from the coarse toy-Earth run on ``(H, W)``)
    ``X^ = I[X]`` for ``X`` in ``T_850, u_850, v_850, tp, z_500``: separable cubic-spline
    interpolation in lat then lon (periodic in lon, the outermost rows repeated at the poles).

Surface diagnostics on the fine grid (``Gamma = 6.5 K/km``, ``H_850 = 1460 m``, as in synth)
    ``t2m = T^_850 + Gamma (H_850 - h) + D(t) + S_land l sin(phi) sin(delta_lag) / sin(eps)``:
    lapse-rate adjustment to the fine orography, and the land-sea contrast of the diurnal cycle
    ``D`` (amplitude ``diurnal_land`` over land, ``diurnal_sea`` over sea, on the fine coastlines)
    and of the seasons (``S_land = land_season``).

    ``U = (u^_850, v^_850)``, ``g = grad h`` (m per m), terrain blocking deflects the wind along
    the height contours: ``U_b = U - (U . g) g / (|g|^2 + G^2)`` (``G = 3e-3``: slopes steeper than
    ``G`` remove most of the cross-contour wind), then surface friction and cross-isobaric
    turning as in synth: ``(u10, v10) = k R(a) U_b`` with ``k = 0.75`` over sea,
    ``0.5 exp(-h / 3000 m)`` over land, ``a = 20 deg sign(phi)``.

    ``tp = max(tp^, 0) clip(exp(alpha w), 0.2, 5)``, ``w = U . g`` the vertical velocity forced by
    flow over the fine orography (m s-1), ``alpha = 25 s m-1``: upslope enhancement on the
    windward side, rain shadow in the lee.

    ``z500 = z^_500``: the free troposphere carries no surface detail; its fine structure is only
    what the interpolation of the large-scale state gives.

Coarse fields: ``X_coarse = B[X]``, the mean over each ``s x s`` block (cells of one block have
nearly equal areas, the difference of cos(lat) within a block is ignored, as usual for blocks).

Training space: precipitation is heavy-tailed and intermittent, so models see
``log1p(tp / 1 mm)``; the other channels as they are. The store keeps per-channel mean and
standard deviation of the training-space fine fields over the training years.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from orbit.atomic import write_atomically
from orbit.data import store
from orbit.synthetic import toy_earth as synth

CHANNELS = ("t2m", "u10", "v10", "tp", "z500")
STATICS = ("orography", "land_sea_mask")
LOG_CHANNELS = ("tp",)  # trained as log1p(value / 1 mm)
BLOCKING_SLOPE = 3e-3  # G, m per m
OROGRAPHIC_PRECIP = 25.0  # alpha, s m-1
PRECIP_FACTOR = (0.2, 5.0)
CHUNK_STEPS = 256  # time steps diagnosed at once (bounds memory on large grids)
STORE_VERSION = 1

CHANNEL_ATTRS = {
    "t2m": store.VARIABLE_ATTRS["t2m"],
    "u10": store.VARIABLE_ATTRS["u10"],
    "v10": store.VARIABLE_ATTRS["v10"],
    "tp": store.VARIABLE_ATTRS["tp"],
    "z500": {**store.VARIABLE_ATTRS["z"], "long_name": "geopotential at 500 hPa"},
}


# --------------------------------------------------------------------------- grids
def fine_grid(coarse_grid: tuple[int, int], scale: int) -> tuple[int, int]:
    """The high-resolution grid ``(s H, s W)``; both grids must be valid toy-Earth grids."""
    if int(scale) < 2:
        raise ValueError(f"scale must be an integer >= 2 (fine cells per coarse cell along each axis), got {scale}")
    h, w = synth.check_grid(coarse_grid)
    return synth.check_grid((h * int(scale), w * int(scale)))


def block_mean(x: np.ndarray, scale: int) -> np.ndarray:
    """Conservative coarsening: mean over ``scale x scale`` blocks. x: (..., H, W) -> (..., H/s, W/s)."""
    *lead, h, w = x.shape
    if h % scale or w % scale:
        raise ValueError(f"grid {h}x{w} is not divisible into {scale}x{scale} blocks")
    return x.reshape(*lead, h // scale, scale, w // scale, scale).mean(axis=(-3, -1))


def coarse_coords(lat: np.ndarray, lon: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """Centres of the coarse blocks: the block means of the fine coordinates (degrees)."""
    return (np.asarray(lat, np.float64).reshape(-1, scale).mean(axis=1),
            np.asarray(lon, np.float64).reshape(-1, scale).mean(axis=1))


# --------------------------------------------------------------------------- physics
def interpolate_to(da: xr.DataArray, lat: np.ndarray, lon: np.ndarray) -> xr.DataArray:
    """``I[X]``: cubic splines in lat then lon onto (lat, lon); periodic in lon, edge rows at the poles.

    da: (..., lat, lon) on a global cell-centred grid -> (..., len(lat), len(lon)).
    """
    pad = 3
    left = da.isel(lon=slice(-pad, None))
    right = da.isel(lon=slice(0, pad))
    wrapped = xr.concat([left.assign_coords(lon=left["lon"] - 360.0), da,
                         right.assign_coords(lon=right["lon"] + 360.0)], dim="lon")
    south = wrapped.isel(lat=[0]).assign_coords(lat=[-90.0])
    north = wrapped.isel(lat=[-1]).assign_coords(lat=[90.0])
    padded = xr.concat([south, wrapped, north], dim="lat")
    return padded.interp(lat=lat, method="cubic").interp(lon=lon, method="cubic")


def surface_fields(earth: synth.ToyEarth, times: np.ndarray, t850: np.ndarray, u850: np.ndarray,
                   v850: np.ndarray, tp: np.ndarray) -> dict[str, np.ndarray]:
    """The fine-grid surface diagnostics of the module docstring.

    earth: the toy Earth on the FINE grid (its orography, land mask, slopes, sun);
    t850, u850, v850, tp: (T, H, W) interpolated free-atmosphere fields -> {t2m, u10, v10, tp}: (T, H, W).
    """
    spec = earth.spec
    forcings = [earth.forcing(t) for t in times]
    diurnal = np.stack([f.diurnal for f in forcings])
    season = np.sin(np.array([f.lagged_declination for f in forcings]))[:, None, None]
    t2m = (t850 + synth.LAPSE * (synth.H850 - earth.orography) + diurnal
           + spec.land_season * earth.land * np.sin(earth.phi) * season / np.sin(synth.OBLIQUITY))

    gx, gy = earth.dhdx, earth.dhdy
    upslope = u850 * gx + v850 * gy  # w = U . grad h, m s-1
    blocked = upslope / (gx**2 + gy**2 + BLOCKING_SLOPE**2)
    ub, vb = u850 - blocked * gx, v850 - blocked * gy
    u10 = earth.wind_factor * (earth.turn_cos * ub - earth.turn_sin * vb)
    v10 = earth.wind_factor * (earth.turn_sin * ub + earth.turn_cos * vb)

    enhancement = np.clip(np.exp(OROGRAPHIC_PRECIP * upslope), *PRECIP_FACTOR)
    return {"t2m": t2m, "u10": u10, "v10": v10, "tp": np.maximum(tp, 0.0) * enhancement}


def generate(source: str = "reanalysis", years: tuple[int, int] = (1990, 1991),
             coarse_grid: tuple[int, int] = (16, 32), scale: int = 4, seed: int = 0,
             step_hours: int = 6) -> xr.Dataset:
    """Fine fields ``<channel> (time, lat, lon)``, their block means ``<channel>_coarse
    (time, lat_coarse, lon_coarse)`` and the fine statics ``orography``, ``land_sea_mask``.

    ``step_hours`` (a multiple of 6) thins the 6-hourly toy-Earth output (neighbouring steps are
    strongly correlated, so thinning saves memory, not information). Memory: about
    ``4 (|CHANNELS| + 2) s^2 H W`` bytes per kept step.
    """
    spec = synth.check_source(source)
    missing = {"t", "u", "v", "tp", "z"} - set(spec.variables)
    if missing:
        raise ValueError(f"source {source!r} lacks {sorted(missing)}, needed to derive {CHANNELS}; "
                         f"use a source with every variable, e.g. 'reanalysis' or 'cmip_a'")
    if step_hours < 6 or step_hours % 6:
        raise ValueError(f"step_hours must be a positive multiple of 6, got {step_hours}")
    grid = fine_grid(coarse_grid, scale)
    large, _ = synth.generate(source, years, coarse_grid, seed)
    large = large.isel(time=slice(None, None, step_hours // 6))
    earth = synth.ToyEarth(spec, grid)
    lat, lon = synth.grid_coords(grid)
    times = large["time"].values.astype("datetime64[ns]")

    fine = {name: np.empty((len(times), *grid), np.float32) for name in CHANNELS}
    for start in range(0, len(times), CHUNK_STEPS):
        part = large.isel(time=slice(start, start + CHUNK_STEPS))
        free = {"t850": part["t"].sel(level=850), "u850": part["u"].sel(level=850),
                "v850": part["v"].sel(level=850), "tp": part["tp"], "z500": part["z"].sel(level=500)}
        free = {k: interpolate_to(v.astype(np.float64), lat, lon).values for k, v in free.items()}
        chunk = slice(start, start + len(part["time"]))
        surface = surface_fields(earth, times[chunk], free["t850"], free["u850"], free["v850"], free["tp"])
        for name, values in {**surface, "z500": free["z500"]}.items():
            fine[name][chunk] = values

    lat_c, lon_c = coarse_coords(lat, lon, scale)
    data_vars = {}
    for name in CHANNELS:
        attrs = dict(CHANNEL_ATTRS[name])
        data_vars[name] = (("time", "lat", "lon"), fine[name], attrs)
        data_vars[f"{name}_coarse"] = (("time", "lat_coarse", "lon_coarse"), block_mean(fine[name], scale),
                                       {**attrs, "long_name": attrs["long_name"] + f" (mean over {scale}x{scale} "
                                                                                  f"fine cells)"})
    for name in STATICS:
        data_vars[name] = (("lat", "lon"), earth.statics[name].values.astype(np.float32),
                           dict(store.STATIC_ATTRS[name]))
    coords = {
        "time": ("time", times, {"long_name": "valid time"}),
        "lat": ("lat", lat.astype(np.float32), _lat_attrs("fine")),
        "lon": ("lon", lon.astype(np.float32), _lon_attrs("fine")),
        "lat_coarse": ("lat_coarse", lat_c.astype(np.float32), _lat_attrs("coarse")),
        "lon_coarse": ("lon_coarse", lon_c.astype(np.float32), _lon_attrs("coarse")),
    }
    attrs = {"source": source, "scale": int(scale), "grid": f"{grid[0]}x{grid[1]}",
             "coarse_grid": f"{grid[0] // scale}x{grid[1] // scale}", "step_hours": int(step_hours),
             "title": f"Toy-Earth downscaling pairs ({source}, x{scale})", "institution": spec.institution,
             "history": f"orbit.synthetic.fine_scale.generate(source={source!r}, years={tuple(years)}, "
                        f"coarse_grid={tuple(coarse_grid)}, scale={scale}, seed={seed}, step_hours={step_hours})",
             "orbit_downscale_version": STORE_VERSION}
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def _lat_attrs(which: str) -> dict[str, str]:
    return {"units": "degrees_north", "standard_name": "latitude", "long_name": f"latitude ({which} grid cell centre)"}


def _lon_attrs(which: str) -> dict[str, str]:
    return {"units": "degrees_east", "standard_name": "longitude", "long_name": f"longitude ({which} grid cell centre)"}


# --------------------------------------------------------------------------- training space
def to_training_space(channel: str, values):
    """Physical -> training space: log1p(tp / 1 mm), identity otherwise (numpy or torch)."""
    if channel in LOG_CHANNELS:
        return np.log1p(values) if isinstance(values, np.ndarray) else values.log1p()
    return values


def to_physical(channel: str, values):
    """Inverse of `to_training_space`; precipitation is clipped at 0 (numpy or torch)."""
    if channel in LOG_CHANNELS:
        return np.expm1(np.maximum(values, 0.0)) if isinstance(values, np.ndarray) else values.clamp_min(0).expm1()
    return values


def training_statistics(ds: xr.Dataset, train_years: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (float64, (|CHANNELS|,)) of the training-space fine fields over ``train_years``."""
    years = ds["time"].dt.year
    train = ds.sel(time=(years >= train_years[0]) & (years <= train_years[1]))
    if train.sizes["time"] == 0:
        raise ValueError(f"train_years {tuple(train_years)} hold no time steps; the data covers "
                         f"{int(years.min())}-{int(years.max())}")
    mean, std = [], []
    for name in CHANNELS:
        values = to_training_space(name, train[name].values.astype(np.float64))
        mean.append(values.mean())
        std.append(max(values.std(), store.STD_FLOOR))
    return np.array(mean), np.array(std)


# --------------------------------------------------------------------------- store
def write(ds: xr.Dataset, path: str | Path, train_years: tuple[int, int], overwrite: bool = False) -> Path:
    """Write ``ds`` (from `generate`) with its training statistics as a zarr store (v2, consolidated)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it")
    mean, std = training_statistics(ds, train_years)
    stats_attrs = {"stats_years": f"{train_years[0]}-{train_years[1]}",
                   "transform": "log1p(value / 1 mm) for tp, identity for the others"}
    out = ds.assign_coords(channel=("channel", list(CHANNELS))).assign(
        norm_mean=("channel", mean.astype(np.float32), {**stats_attrs, "long_name": "training-space mean"}),
        norm_std=("channel", std.astype(np.float32), {**stats_attrs, "long_name": "training-space std"}))
    out.attrs["train_years"] = f"{train_years[0]}-{train_years[1]}"
    encoding = {}
    for name in out.data_vars:
        dims = out[name].dims
        if dims and dims[0] == "time":
            step_bytes = 4 * int(np.prod([out.sizes[d] for d in dims[1:]]))
            encoding[name] = {"chunks": (max(1, store.CHUNK_BYTES // step_bytes), *out[name].shape[1:])}
    return write_atomically(
        path, lambda tmp: out.to_zarr(tmp, mode="w", zarr_format=2, consolidated=True, encoding=encoding),
        overwrite=overwrite)


def open_pairs(path: str | Path) -> xr.Dataset:
    """Open a store written by `write`; a clear error (and the command that makes one) otherwise."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"downscaling store {str(path)!r} not found; create it with "
                                f"`orbit data downscale --out {path}`")
    ds = xr.open_zarr(path, consolidated=True)
    if ds.attrs.get("orbit_downscale_version") != STORE_VERSION:
        raise ValueError(f"{path} is not an ORBIT downscaling store (attribute orbit_downscale_version="
                         f"{ds.attrs.get('orbit_downscale_version')!r}, expected {STORE_VERSION})")
    return ds


def synthesize(path: str | Path, source: str = "reanalysis", years: tuple[int, int] = (1990, 1991),
               train_years: tuple[int, int] | None = None, coarse_grid: tuple[int, int] = (16, 32),
               scale: int = 4, seed: int = 0, step_hours: int = 6, overwrite: bool = False) -> Path:
    """`generate` + `write`; ``train_years`` defaults to all years but the last."""
    years = synth.check_years(years)
    if train_years is None:
        train_years = (years[0], max(years[0], years[1] - 1))
    if not years[0] <= train_years[0] <= train_years[1] <= years[1]:
        raise ValueError(f"train_years {tuple(train_years)} must lie within years {years}")
    if Path(path).exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass --overwrite to replace it")
    ds = generate(source, years, coarse_grid, scale, seed, step_hours)
    return write(ds, path, train_years, overwrite=overwrite)
