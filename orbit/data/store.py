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

Models and loaders work in *channels*: a 3-D variable ``t`` at 850 hPa is channel ``t850``; a 2-D
variable is its own channel (``t2m``).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from orbit.atomic import write_atomically

STORE_VERSION = 1
KINDS = ("model", "reanalysis")
STATIC_NAMES = ("orography", "land_sea_mask", "latitude_2d")
FIELD_DIMS_2D = ("time", "lat", "lon")
FIELD_DIMS_3D = ("time", "level", "lat", "lon")
STD_FLOOR = 1e-8
CHUNK_BYTES = 1 << 20  # ~1 MiB per field chunk: few files, cheap random time access

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

    An integer index still returns ``T = 1`` so callers always see the same layout.
    """
    index = _time_index(time_slice_or_index)
    out = []
    for name, level in _resolve_channels(ds, channels):
        var = ds[name].isel(time=index)
        if level is not None:
            var = var.sel(level=level)
        out.append(np.asarray(var.transpose("time", "lat", "lon").values, dtype=np.float32))
    return np.stack(out, axis=1)


def climatology(ds: xr.Dataset, channels: Sequence[str], times: np.ndarray) -> np.ndarray:
    """Climatological mean of ``channels`` at ``times``: ``(T, C, H, W)`` float32.

    Evaluates the stored least-squares fit: ``design_matrix(times) @ clim_coef``.
    """
    _resolve_channels(ds, channels)
    coef = ds["clim_coef"].sel(channel=list(channels)).transpose("channel", "harmonic", "lat", "lon")
    basis = design_matrix(np.atleast_1d(times))
    return np.einsum("tk,ckhw->tchw", basis, coef.values.astype(np.float64)).astype(np.float32)


# --------------------------------------------------------------------------- validation
def _check_coords(ds: xr.Dataset) -> None:
    for dim in ("time", "lat", "lon"):
        if dim not in ds.coords:
            raise ValueError(f"dataset has no '{dim}' coordinate; fields need dims "
                             f"{FIELD_DIMS_2D} or {FIELD_DIMS_3D}, got coords {list(ds.coords)}")
    time = ds["time"].values
    if not np.issubdtype(time.dtype, np.datetime64):
        raise ValueError(f"'time' must be datetime64 (convert cftime to proleptic-gregorian "
                         f"datetime64 first), got dtype {time.dtype}")
    if time.size == 0 or np.any(np.diff(time) <= np.timedelta64(0, "ns")):
        raise ValueError("'time' must be non-empty and strictly increasing")
    lat, lon = ds["lat"].values, ds["lon"].values
    if lat.size > 1 and np.any(np.diff(lat) <= 0):
        raise ValueError(f"'lat' must be strictly ascending (south to north), got "
                         f"{lat[0]:.3f} ... {lat[-1]:.3f}; use ds.sortby('lat')")
    if np.any(np.abs(lat) > 90):
        raise ValueError(f"'lat' must lie in [-90, 90], got range [{lat.min()}, {lat.max()}]")
    if np.any(lon < 0) or np.any(lon >= 360):
        raise ValueError(f"'lon' must lie in [0, 360), got range [{lon.min()}, {lon.max()}]; "
                         f"wrap with (lon % 360) and sort")
    if lon.size > 1 and np.any(np.diff(lon) <= 0):
        raise ValueError("'lon' must be strictly ascending")
    if "level" in ds.coords:
        level = ds["level"].values
        if not np.issubdtype(level.dtype, np.number) or np.any(level <= 0):
            raise ValueError(f"'level' must hold positive pressures in hPa, got {level}")
        if np.any(level != np.round(level)) or len(set(level.tolist())) != level.size:
            raise ValueError(f"'level' must hold distinct integer hPa values, got {level}")


def _count_nonfinite(var: xr.DataArray) -> int:
    """Count NaN/Inf one time block at a time (bounded memory for large or lazy inputs)."""
    block = max(1, CHUNK_BYTES * 16 // max(1, var[0].size * 4))
    return sum(int((~np.isfinite(var.isel(time=slice(i, i + block)).values)).sum())
               for i in range(0, var.sizes["time"], block))


def _check_fields(ds: xr.Dataset) -> None:
    fields = _field_names(ds)
    if not fields:
        raise ValueError(f"dataset has no field variables with a 'time' dim; got {list(ds.data_vars)}")
    for name in ds.data_vars:
        dims = ds[name].dims
        if dims not in (FIELD_DIMS_2D, FIELD_DIMS_3D):
            raise ValueError(f"variable '{name}' has dims {dims}; fields must have dims "
                             f"{FIELD_DIMS_2D} or {FIELD_DIMS_3D} (pass statics separately)")
        if ds[name].dtype != np.float32:
            raise ValueError(f"variable '{name}' has dtype {ds[name].dtype}; fields must be float32")
        bad = _count_nonfinite(ds[name])
        if bad:
            raise ValueError(f"variable '{name}' has {bad} NaN/Inf values; fields must be finite "
                             f"(fill or drop missing data before writing)")


def _check_statics(statics: xr.Dataset, fields: xr.Dataset) -> None:
    for name, var in statics.data_vars.items():
        if name not in STATIC_NAMES:
            raise ValueError(f"unknown static field '{name}'; valid: {list(STATIC_NAMES)}")
        if var.dims != ("lat", "lon"):
            raise ValueError(f"static '{name}' has dims {var.dims}; statics must have dims ('lat', 'lon')")
        for dim in ("lat", "lon"):
            if not np.allclose(var[dim].values, fields[dim].values, atol=1e-4):
                raise ValueError(f"static '{name}' has a different '{dim}' grid than the fields")
        if not np.all(np.isfinite(var.values)):
            raise ValueError(f"static '{name}' has {int((~np.isfinite(var.values)).sum())} NaN/Inf values")


def _train_mask(times: np.ndarray, train_years: tuple[int, int]) -> np.ndarray:
    start, end = train_years
    if start > end:
        raise ValueError(f"train_years must be (start, end) with start <= end, got {train_years}")
    years = times.astype("datetime64[Y]").astype(int) + 1970
    mask = (years >= start) & (years <= end)
    if mask.sum() < len(HARMONICS):
        raise ValueError(f"train_years {train_years} select {int(mask.sum())} time steps; need at least "
                         f"{len(HARMONICS)} (data covers {years.min()}-{years.max()})")
    return mask


# --------------------------------------------------------------------------- statistics
def _channel_values(ds: xr.Dataset, name: str, level: int | None, time_mask: np.ndarray) -> np.ndarray:
    """One channel on the masked times: ``(T, H*W)`` float64."""
    var = ds[name] if level is None else ds[name].sel(level=level)
    values = var.isel(time=np.flatnonzero(time_mask)).transpose("time", "lat", "lon").values
    return values.reshape(values.shape[0], -1).astype(np.float64)


def _train_statistics(ds: xr.Dataset, time_mask: np.ndarray) -> xr.Dataset:
    """norm_mean/norm_std (channel,) and clim_coef (channel, harmonic, lat, lon), channel by
    channel so memory stays at one channel of the training period."""
    channels = _channel_map(ds)
    times = ds["time"].values[time_mask]
    shape = (ds.sizes["lat"], ds.sizes["lon"])
    means, stds, coefs = [], [], []
    for name, level in channels.values():
        values = _channel_values(ds, name, level, time_mask)
        means.append(values.mean())
        stds.append(max(values.std(), STD_FLOOR))
        coefs.append(fit_harmonics(times, values).reshape(len(HARMONICS), *shape))
    coords = {"channel": list(channels), "harmonic": list(HARMONICS)}
    return xr.Dataset(
        {
            "norm_mean": ("channel", np.asarray(means, np.float32), {"long_name": "training-years mean"}),
            "norm_std": ("channel", np.asarray(stds, np.float32), {"long_name": "training-years std"}),
            "clim_coef": (("channel", "harmonic", "lat", "lon"), np.stack(coefs).astype(np.float32),
                          {"long_name": "least-squares climatology coefficients on the harmonic basis"}),
        },
        coords=coords,
    )


# --------------------------------------------------------------------------- writing
def _canonical(ds: xr.Dataset) -> xr.Dataset:
    """Coordinate dtypes/attrs of the contract, CF attrs filled in, stale encodings dropped."""
    ds = ds.drop_encoding()
    coords = {
        "time": ("time", ds["time"].values.astype("datetime64[ns]"), {"standard_name": "time"}),
        "lat": ("lat", ds["lat"].values.astype(np.float32),
                {"standard_name": "latitude", "units": "degrees_north"}),
        "lon": ("lon", ds["lon"].values.astype(np.float32),
                {"standard_name": "longitude", "units": "degrees_east"}),
    }
    if "level" in ds.dims:
        coords["level"] = ("level", ds["level"].values.astype(np.int32),
                           {"units": "hPa", "standard_name": "air_pressure", "positive": "down"})
    ds = ds.assign_coords(coords)
    for name in ds.data_vars:
        ds[name].attrs = {**VARIABLE_ATTRS.get(name, {}), **STATIC_ATTRS.get(name, {}), **ds[name].attrs}
    return ds


def _chunking(var: xr.DataArray) -> dict[str, int]:
    per_step = int(np.prod([n for d, n in var.sizes.items() if d != "time"])) * 4
    return {**var.sizes, "time": int(np.clip(CHUNK_BYTES // per_step, 1, var.sizes["time"]))}


def _assemble(fields: xr.Dataset, statics: xr.Dataset | None, stats: xr.Dataset,
              global_attrs: dict) -> xr.Dataset:
    lat2d = xr.DataArray(np.broadcast_to(fields["lat"].values[:, None], (fields.sizes["lat"], fields.sizes["lon"])),
                         dims=("lat", "lon")).astype(np.float32)
    static_vars = {"latitude_2d": lat2d}
    if statics is not None:
        static_vars.update({n: v.astype(np.float32).drop_vars(["lat", "lon"], errors="ignore")
                            for n, v in statics.data_vars.items()})
    out = fields.assign(static_vars).merge(stats)
    out = _canonical(out)
    for name in _field_names(out):
        chunks = _chunking(out[name])
        if out[name].chunks is not None:  # lazy (dask) input: align its chunks with the store's
            out[name] = out[name].chunk(chunks)
        out[name].encoding["chunks"] = tuple(chunks[d] for d in out[name].dims)
    out.attrs = global_attrs
    return out


def write_store(ds_fields: xr.Dataset, path: str | os.PathLike, *, source: str, kind: str,
                train_years: tuple[int, int], statics: xr.Dataset | None = None,
                attrs: dict | None = None, overwrite: bool = False) -> xr.Dataset:
    """Validate ``ds_fields``, add statics, norm stats and climatology, write atomically, reopen.

    The store is written to a temporary sibling directory and renamed into place, so a reader
    never sees a half-written store and an interrupted write leaves the target untouched.
    Raises ValueError for a non-canonical layout and FileExistsError if ``path`` exists and
    ``overwrite`` is False.
    """
    path = Path(path)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"store {path} already exists; pass overwrite=True to replace it")
    _check_coords(ds_fields)
    _check_fields(ds_fields)
    if statics is not None:
        _check_statics(statics, ds_fields)
    mask = _train_mask(ds_fields["time"].values.astype("datetime64[ns]"), tuple(train_years))
    stats = _train_statistics(ds_fields, mask)
    train = f"{train_years[0]:04d}-{train_years[1]:04d}"
    stats["norm_mean"].attrs["stats_years"] = stats["norm_std"].attrs["stats_years"] = train
    global_attrs = {
        "source": source, "kind": kind, "title": f"ORBIT store for {source}", "institution": "unknown",
        "history": "written by orbit.data.store.write_store", **(attrs or {}),
        "grid": f"{ds_fields.sizes['lat']}x{ds_fields.sizes['lon']}", "train_years": train,
        "orbit_store_version": STORE_VERSION,
    }
    out = _assemble(ds_fields, statics, stats, global_attrs)

    write_atomically(path, lambda tmp: out.to_zarr(tmp, mode="w", zarr_format=2, consolidated=True),
                     overwrite=overwrite)
    return open_store(path)


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
