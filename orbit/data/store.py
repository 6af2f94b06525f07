"""The ORBIT zarr store: one validated, self-describing dataset per data source.

A store holds the gridded fields of one source (a CMIP6 model, a reanalysis, the toy Earth) on a
canonical layout, plus everything a loader needs without another pass over the data: static
fields, per-channel normalization statistics and a smooth climatology, all computed on the
training years only so that nothing from validation/test years leaks into the model.

Layout (see docs/data.md for the full contract):

- fields ``(time, lat, lon)`` or ``(time, level, lat, lon)``, float32, lat ascending,
  lon in [0, 360), time datetime64[ns] strictly increasing;
- statics ``(lat, lon)``: ``orography``, ``land_sea_mask``, ``latitude_2d``;
- ``norm_mean``, ``norm_std``: ``(channel,)``;
- ``clim_coef``: ``(channel, harmonic, lat, lon)``, coefficients on :data:`HARMONICS`.

Stores are written by :mod:`orbit.data.writer` (block by block, resumable, atomic); this module
holds the schema and reads.

Models and loaders work in *channels*: a 3-D variable ``t`` at 850 hPa is channel ``t850``; a 2-D
variable is its own channel (``t2m``).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr


STORE_VERSION = 1
KINDS = ("model", "reanalysis")
STATIC_NAMES = ("orography", "land_sea_mask", "latitude_2d")
FIELD_DIMS_2D = ("time", "lat", "lon")
FIELD_DIMS_3D = ("time", "level", "lat", "lon")
STD_FLOOR = 1e-8
CHUNK_BYTES = 1 << 20  # ~1 MiB per chunk: the time chunking of stores other than the ORBIT store

# CF metadata for the ERA5-like short names; filled in where a writer left them out.
VARIABLE_ATTRS: dict[str, dict[str, str]] = {
    "t2m": {"units": "K", "long_name": "2 metre temperature", "standard_name": "air_temperature"},
    "u10": {"units": "m s-1", "long_name": "10 metre eastward wind", "standard_name": "eastward_wind"},
    "v10": {"units": "m s-1", "long_name": "10 metre northward wind", "standard_name": "northward_wind"},
    "tp": {"units": "mm", "long_name": "total precipitation over the preceding 6 h",
           "standard_name": "precipitation_amount"},
    "z": {"units": "m2 s-2", "long_name": "geopotential", "standard_name": "geopotential"},
    "t": {"units": "K", "long_name": "temperature", "standard_name": "air_temperature"},
    "u": {"units": "m s-1", "long_name": "eastward wind", "standard_name": "eastward_wind"},
    "v": {"units": "m s-1", "long_name": "northward wind", "standard_name": "northward_wind"},
    "q": {"units": "kg kg-1", "long_name": "specific humidity", "standard_name": "specific_humidity"},
}
STATIC_ATTRS: dict[str, dict[str, str]] = {
    "orography": {"units": "m", "long_name": "surface height above sea level",
                  "standard_name": "surface_altitude"},
    "land_sea_mask": {"units": "1", "long_name": "land-sea mask (1 = land, 0 = sea)",
                      "standard_name": "land_binary_mask"},
    "latitude_2d": {"units": "degrees_north", "long_name": "latitude broadcast onto the grid",
                    "standard_name": "latitude"},
}

# Climatology basis: day-of-year x hour-of-day harmonics (15 functions, see `design_matrix`).
HARMONICS: tuple[str, ...] = (
    "const",
    "cos_y1", "sin_y1", "cos_y2", "sin_y2", "cos_y3", "sin_y3",
    "cos_d1", "sin_d1", "cos_d2", "sin_d2",
    "cos_y1_cos_d1", "cos_y1_sin_d1", "sin_y1_cos_d1", "sin_y1_sin_d1",
)
DAYS_PER_YEAR = 365.25


# --------------------------------------------------------------------------- climatology basis
def design_matrix(times: np.ndarray) -> np.ndarray:
    """Climatology basis evaluated at ``times``: ``(T, 15)`` float64, columns as :data:`HARMONICS`.

    doy is the fractional day of the year counted from 00 UTC Jan 1 (0 <= doy < 366); hour the
    fractional UTC hour of day. Annual terms use ``2 pi k doy / 365.25`` (k = 1..3), diurnal terms
    ``2 pi k hour / 24`` (k = 1..2), plus the 4 products of the first annual and first diurnal pair
    (a seasonally varying diurnal cycle).
    """
    t = np.asarray(times, dtype="datetime64[ns]")
    year_start = t.astype("datetime64[Y]").astype("datetime64[ns]")
    day_start = t.astype("datetime64[D]").astype("datetime64[ns]")
    doy = (t - year_start) / np.timedelta64(1, "D")
    hour = (t - day_start) / np.timedelta64(1, "h")
    ya = [2 * np.pi * k * doy / DAYS_PER_YEAR for k in (1, 2, 3)]
    da = [2 * np.pi * k * hour / 24.0 for k in (1, 2)]
    cy1, sy1, cd1, sd1 = np.cos(ya[0]), np.sin(ya[0]), np.cos(da[0]), np.sin(da[0])
    columns = [np.ones_like(doy)]
    for a in ya:
        columns += [np.cos(a), np.sin(a)]
    for a in da:
        columns += [np.cos(a), np.sin(a)]
    columns += [cy1 * cd1, cy1 * sd1, sy1 * cd1, sy1 * sd1]
    return np.stack(columns, axis=-1)


def fit_harmonics(times: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Least-squares coefficients of ``values: (T, N)`` on the basis at ``times``: ``(15, N)`` float64.

    6-hourly sampling cannot see the second diurnal sine (zero at 0/6/12/18 UTC); lstsq then
    returns the minimum-norm solution, which sets that coefficient to zero.
    """
    coef, *_ = np.linalg.lstsq(design_matrix(times), np.asarray(values, np.float64), rcond=None)
    return coef


# --------------------------------------------------------------------------- channels
def _field_names(ds: xr.Dataset) -> list[str]:
    """Data variables that are fields (have a time dim), in data_vars order."""
    return [name for name, var in ds.data_vars.items() if "time" in var.dims]


def _channel_map(ds: xr.Dataset) -> dict[str, tuple[str, int | None]]:
    """channel name -> (variable, level or None), in canonical channel order.

    A written store keeps its order in the ``channel`` coordinate (zarr does not preserve the
    order of data variables); a fresh dataset derives it from its data_vars order.
    """
    fields = _field_names(ds)
    two_d = [n for n in fields if "level" not in ds[n].dims]
    three_d = [n for n in fields if "level" in ds[n].dims]
    mapping: dict[str, tuple[str, int | None]] = {n: (n, None) for n in two_d}
    for name in three_d:
        for level in ds["level"].values:
            mapping[f"{name}{int(level)}"] = (name, int(level))
    if "channel" in ds.coords:
        return {str(c): mapping[str(c)] for c in ds["channel"].values if str(c) in mapping}
    return mapping


def channel_names(ds: xr.Dataset) -> list[str]:
    """Channels of a store in canonical order: 2-D variables (data_vars order), then each 3-D
    variable level by level (``z500, z850, t500, ...``)."""
    return list(_channel_map(ds))


def _resolve_channels(ds: xr.Dataset, channels: Sequence[str]) -> list[tuple[str, int | None]]:
    mapping = _channel_map(ds)
    unknown = [c for c in channels if c not in mapping]
    if unknown:
        raise ValueError(f"unknown channel(s) {unknown}; this store has channels {list(mapping)}")
    return [mapping[c] for c in channels]


def _time_index(index: int | slice | Sequence[int] | np.ndarray) -> list[int] | slice | np.ndarray:
    """Keep the time dim for an integer; turn a run of consecutive indices into a slice, which a
    lazily opened store reads chunk by chunk instead of point by point."""
    if np.isscalar(index):
        return [int(index)]
    if isinstance(index, slice):
        return index
    index = np.asarray(index)
    if index.ndim == 1 and index.size > 1 and index[0] >= 0 and np.all(np.diff(index) == 1):
        return slice(int(index[0]), int(index[-1]) + 1)
    return index


def channel_array(ds: xr.Dataset, channels: Sequence[str],
                  time_slice_or_index: int | slice | Sequence[int] | np.ndarray) -> np.ndarray:
    """Read ``channels`` at positional time index/indices: ``(T, C, H, W)`` float32.

    An integer index still returns ``T = 1`` so callers always see the same layout. Each variable is
    read once for all its requested levels (its chunks hold every level of a time step).
    """
    index = _time_index(time_slice_or_index)
    by_variable: dict[str, list[tuple[int, int | None]]] = {}
    for position, (name, level) in enumerate(_resolve_channels(ds, channels)):
        by_variable.setdefault(name, []).append((position, level))
    out = None
    for name, wanted in by_variable.items():
        var = ds[name].isel(time=index)
        if wanted[0][1] is None:
            values = var.transpose("time", "lat", "lon").values[:, None]
        else:
            values = var.sel(level=[level for _, level in wanted]).transpose("time", "level", "lat", "lon").values
        if out is None:
            out = np.empty((values.shape[0], len(channels), *values.shape[2:]), np.float32)
        out[:, [position for position, _ in wanted]] = values
    return out


def climatology(ds: xr.Dataset, channels: Sequence[str], times: np.ndarray) -> np.ndarray:
    """Climatological mean of ``channels`` at ``times``: ``(T, C, H, W)`` float32.

    Evaluates the stored least-squares fit: ``design_matrix(times) @ clim_coef``.
    """
    _resolve_channels(ds, channels)
    coef = ds["clim_coef"].sel(channel=list(channels)).transpose("channel", "harmonic", "lat", "lon")
    basis = design_matrix(np.atleast_1d(times))
    return np.einsum("tk,ckhw->tchw", basis, coef.values.astype(np.float64)).astype(np.float32)


def open_store(path: str | os.PathLike) -> xr.Dataset:
    """Open an ORBIT store lazily; FileNotFoundError / ValueError if it is missing or not one."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no ORBIT store at {path}")
    try:
        ds = xr.open_zarr(path, consolidated=True)
    except Exception as err:  # zarr raises several types for "not a (consolidated) zarr store"
        raise ValueError(f"{path} is not a consolidated zarr store: {err}") from err
    version = ds.attrs.get("orbit_store_version")
    if version != STORE_VERSION:
        raise ValueError(f"{path} is not an ORBIT store of version {STORE_VERSION} "
                         f"(attr orbit_store_version={version!r})")
    return ds
