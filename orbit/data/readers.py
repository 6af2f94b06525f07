"""Open CMIP6 netCDF files and ERA5 / WeatherBench2-style zarr stores as canonical ORBIT fields.

"Canonical" is the layout of an ORBIT store (see ``orbit/data/store.py``) before regridding:
short ERA5-like names (``t2m``, ``t``, ``tp`` ...), dims ``(time, lat, lon)`` or
``(time, level, lat, lon)``, lat ascending, lon in [0, 360) ascending, level in integer hPa
(ascending, i.e. top of the atmosphere first), time datetime64[ns], float32, store units.

Choices worth knowing:

- Calendars. Model calendars are mapped onto the proleptic Gregorian calendar with xarray's
  ``convert_calendar``. ``360_day`` dates are placed at the same *fraction of the year*
  (``align_on="year"``: 30 Feb -> 2 Mar in a common year), so the seasonal cycle stays in place and
  no date is lost. Every other calendar (noleap, all_leap, julian, gregorian) keeps its year, month,
  day and time of day; the few dates that do not exist in the Gregorian calendar (29 Feb of a
  Julian/all_leap year that is not a Gregorian leap year) are dropped.
- Variables are recognised by their CMIP6 / ERA5 name, or else by their CF ``standard_name`` (so
  files such as iris's ``A1B_north_america.nc``, whose variable is called ``air_temperature``, work).
- Variables ORBIT cannot recognise (``air`` in a NCEP file, ``sst`` mapped onto a channel on purpose)
  are named by the user: ``rename={"air": "t2m"}`` (CLI ``--rename air=t2m`` or a YAML map).
- Units are converted from the ``units`` attribute through UDUNITS (:mod:`orbit.data.units`:
  ``degC``, ``degK``, ``kg m-2 s-1`` -> mm per 6 h, ``zg`` m -> geopotential m2 s-2, ...); unknown
  units are an error rather than a silent guess.
- COARDS files (latitude north to south, int16 packed with ``scale_factor``/``add_offset``, missing
  values) are decoded by xarray's CF decoding and sorted like any other file.
- ``time=(START, END)`` keeps the dates between START and END, both inclusive with xarray's
  ``sel(time=slice(START, END))`` semantics (``"2000-12-31"`` includes 18 UTC of that day). Files
  are opened lazily with dask, so only the window is ever read.
- CMIP6 masks pressure levels below the ground (NaN). Those values are filled with the value of the
  nearest valid level above, on all levels of the file before any level is selected, because a
  store must be finite and this keeps the fill as local as the file allows.
- Precipitation and specific humidity are clipped at 0: reanalysis and model output carry tiny
  negative packing noise.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
import yaml

from orbit.data import units
from orbit.data.store import STATIC_ATTRS, VARIABLE_ATTRS

CHUNK_BYTES = 64 << 20  # dask chunks of a source variable: whole grids, as many time steps as fit
MAX_TIME_CHUNK = 256  # time steps per dask chunk at most: fewer, larger tasks are cheaper

CMIP6_NAMES = {"tas": "t2m", "uas": "u10", "vas": "v10", "pr": "tp", "zg": "z", "ta": "t", "ua": "u",
               "va": "v", "hus": "q"}
CMIP6_STATIC_NAMES = {"orog": "orography", "sftlf": "land_sea_mask"}
ERA5_NAMES = {
    "2m_temperature": "t2m", "10m_u_component_of_wind": "u10", "10m_v_component_of_wind": "v10",
    "total_precipitation_6hr": "tp", "geopotential": "z", "temperature": "t",
    "u_component_of_wind": "u", "v_component_of_wind": "v", "specific_humidity": "q",
}
ERA5_STATIC_NAMES = {"geopotential_at_surface": "orography", "land_sea_mask": "land_sea_mask"}
# CF standard_name -> (name without a level dim, name with one): the fallback for files that do
# not follow CMIP6 naming.
STANDARD_NAMES = {
    "air_temperature": ("t2m", "t"), "eastward_wind": ("u10", "u"), "northward_wind": ("v10", "v"),
    "precipitation_flux": ("tp", None), "precipitation_amount": ("tp", None),
    "geopotential_height": (None, "z"), "geopotential": (None, "z"), "specific_humidity": (None, "q"),
}
THREE_D = ("z", "t", "u", "v", "q")
NON_NEGATIVE = ("tp", "q")  # clipped at 0 after reading and after regridding
VARIABLES = tuple(VARIABLE_ATTRS)  # every field name a store may hold
RENAME_TARGETS = (*VARIABLES, *CMIP6_STATIC_NAMES.values())  # what a user's variable map may name
_DIM_ALIASES = {"latitude": "lat", "longitude": "lon", "plev": "level", "pressure_level": "level",
                "isobaricInhPa": "level"}
_PA_UNITS = ("pa",)
_HPA_UNITS = ("hpa", "mbar", "millibar", "millibars", "mb")


@dataclass
class SourceFields:
    """Canonical fields and statics of one source, still on the source grid (lazy where possible).

    fields: name -> (time, lat, lon) or (time, level, lat, lon); statics: name -> (lat, lon).
    """

    fields: dict[str, xr.DataArray]
    statics: dict[str, xr.DataArray] = field(default_factory=dict)
    kind: str = "model"
    attrs: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- time
def to_datetime64(obj: xr.DataArray | xr.Dataset) -> xr.DataArray | xr.Dataset:
    """Put ``obj``'s time axis on datetime64[ns] (proleptic Gregorian); see the module docstring."""
    time = obj["time"]
    if np.issubdtype(time.dtype, np.datetime64):
        return obj.assign_coords(time=time.values.astype("datetime64[ns]"))
    years = time.dt.year.values
    if years.min() < 1678 or years.max() > 2261:
        raise ValueError(f"time runs over years {years.min()}-{years.max()}, outside what datetime64[ns] can "
                         f"hold (1678-2261); shift the model years (e.g. of a piControl run) before converting")
    calendar = time.dt.calendar
    align_on = "year" if calendar == "360_day" else None
    out = obj.convert_calendar("proleptic_gregorian", align_on=align_on, use_cftime=False)
    return out.assign_coords(time=out["time"].values.astype("datetime64[ns]"))


def infer_time_step(times: np.ndarray) -> str:
    """Human-readable native step of ``times`` (datetime64): '6h', '1D', '1M', '1Y' or 'Nh'.

    Monthly and yearly steps vary in length, so they are recognised by the median spacing.
    """
    if len(times) < 2:
        return "unknown"
    hours = float(np.median(np.diff(times).astype("timedelta64[s]").astype(np.int64))) / 3600.0
    if 27 * 24 <= hours <= 32 * 24:
        return "1M"
    if 359 * 24 <= hours <= 367 * 24:
        return "1Y"
    if hours == 24:
        return "1D"
    return f"{hours:g}h"


# --------------------------------------------------------------------------- coordinates
def _unit_key(units: str) -> str:
    return " ".join(units.replace("**", "").replace("^", "").split()).lower()


def _level_hpa(level: xr.DataArray) -> np.ndarray:
    """Pressure levels in hPa (float), from Pa or hPa (guessed from the values if no units)."""
    values = level.values.astype(np.float64)
    units = _unit_key(str(level.attrs.get("units", "")))
    if units in _PA_UNITS or (units not in _HPA_UNITS and values.max() > 1100):
        values = values / 100.0
    return values


def canonical_coords(da: xr.DataArray, what: str) -> xr.DataArray:
    """Rename dims to (time, level, lat, lon), level -> hPa, lon -> [0, 360), both sorted ascending.

    Raises ValueError for dims ORBIT cannot place (e.g. ensemble members) or duplicate points.
    """
    da = da.rename({k: v for k, v in _DIM_ALIASES.items() if k in da.dims})
    extra = [d for d in da.dims if d not in ("time", "level", "lat", "lon")]
    singleton = [d for d in extra if da.sizes[d] == 1]
    da = da.squeeze(singleton, drop=True)
    extra = [d for d in extra if d not in singleton]
    if extra or "lat" not in da.dims or "lon" not in da.dims:
        raise ValueError(f"{what} has dims {da.dims}; expected (time, [level,] lat, lon) "
                         f"(also accepted: latitude, longitude, plev, pressure_level)")
    keep = [c for c in ("time", "level", "lat", "lon") if c in da.dims]
    da = da.drop_vars([c for c in da.coords if c not in keep])
    if da["lat"].ndim != 1 or da["lon"].ndim != 1:
        raise ValueError(f"{what} is on a curvilinear grid (2-D lat/lon); only regular lat-lon "
                         f"grids are supported")
    coords = {"lon": da["lon"].values.astype(np.float64) % 360.0}
    if "level" in da.dims:
        coords["level"] = _level_hpa(da["level"])
    da = da.assign_coords(coords).sortby(["lat", "lon", *(["level"] if "level" in da.dims else [])])
    for dim in ("lat", "lon", "level"):
        if dim in da.dims and np.unique(da[dim].values).size != da.sizes[dim]:
            raise ValueError(f"{what} has duplicate '{dim}' values after canonicalization: "
                             f"{da[dim].values}")
    return da.transpose(*keep)


def fill_below_ground(da: xr.DataArray) -> xr.DataArray:
    """Fill NaN (CMIP6's below-ground mask) from the nearest valid level above. da: (time, level, lat, lon).

    Levels are ascending in hPa, so "above" is the previous index along ``level``.
    """
    filled = [da.isel(level=0, drop=True)]
    for k in range(1, da.sizes["level"]):
        filled.append(da.isel(level=k, drop=True).fillna(filled[-1]))
    return xr.concat(filled, dim=da["level"]).transpose(*da.dims)


TimeWindow = tuple[str, str]


def check_time_window(window: TimeWindow | None) -> TimeWindow | None:
    """``(START, END)`` as given (dates such as ``2000-01-01`` or ``2000-06-30T18``); ValueError unless
    both parse and START <= END."""
    if window is None:
        return None
    try:
        start, end = (pd.Timestamp(str(w)) for w in window)
    except (ValueError, TypeError) as err:
        raise ValueError(f"time window must be two dates START END like 2000-01-01 2000-12-31, got {window!r} "
                         f"({err})") from None
    if start > end:
        raise ValueError(f"time window starts after it ends: {window[0]} > {window[1]}")
    return str(window[0]), str(window[1])


def check_rename(rename: Mapping[str, str] | None) -> dict[str, str]:
    """The user's variable map (source name -> ORBIT name), checked before any file is opened."""
    rename = dict(rename or {})
    unknown = {src: dst for src, dst in rename.items() if dst not in RENAME_TARGETS}
    if unknown:
        raise ValueError(f"variable map {unknown} names unknown ORBIT variable(s); valid: {list(RENAME_TARGETS)}")
    targets = list(rename.values())
    twice = sorted({t for t in targets if targets.count(t) > 1})
    if twice:
        raise ValueError(f"variable map sends several source variables to {twice}: {rename}")
    return rename


def read_variable_map(path: str | os.PathLike) -> dict[str, str]:
    """A YAML variable map ``{source name: ORBIT name}`` (e.g. ``air: t2m``), checked like :func:`check_rename`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"variable map {path} not found")
    mapping = yaml.safe_load(path.read_text())
    if not isinstance(mapping, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        raise ValueError(f"variable map {path} must be a YAML mapping of source names to ORBIT names "
                         f"(e.g. 'air: t2m'), got {mapping!r}")
    return check_rename(mapping)


def _check_renamed(rename: Mapping[str, str], found: set[str]) -> None:
    missing = sorted(set(rename) - found)
    if missing:
        raise ValueError(f"variable map names source variable(s) {missing} that no input holds; the inputs "
                         f"hold {sorted(found)}")


def _in_window(da: xr.DataArray, window: TimeWindow | None, what: str) -> xr.DataArray:
    if window is None:
        return da
    selected = da.sel(time=slice(*window))
    if selected.sizes["time"] == 0:
        span = np.datetime_as_string(da["time"].values[[0, -1]], unit="h")
        raise ValueError(f"time window {window[0]} .. {window[1]} holds no time step of {what}, which covers "
                         f"{span[0]} .. {span[1]}")
    return selected


def _chunked(datasets: list[xr.Dataset]) -> list[xr.Dataset]:
    """Lazily opened (not yet dask) datasets of one source as dask arrays with ONE time chunking: as many
    steps as the largest variable fits in CHUNK_BYTES. Each chunk then reads only its own steps from
    the file, and a block of the merged fields (chunk edges shared by all variables) reads every input
    chunk once."""
    step_bytes = [var.size // var.sizes["time"] * max(var.dtype.itemsize, 4)
                  for ds in datasets for var in ds.data_vars.values() if var.sizes.get("time")]
    steps = int(np.clip(CHUNK_BYTES // max(step_bytes, default=1), 1, MAX_TIME_CHUNK))
    return [ds.chunk({"time": steps}) if "time" in ds.dims else ds for ds in datasets]


def _as_field(da: xr.DataArray, name: str, what: str, window: TimeWindow | None = None) -> xr.DataArray:
    """Canonical field ``name`` from a raw variable: coords, time window, units, sign, dtype, attrs."""
    source_units = da.attrs.get("units")
    da = canonical_coords(da, what)
    expects_level = name in THREE_D
    if expects_level != ("level" in da.dims):
        raise ValueError(f"{what} maps to '{name}', which is {'3-D' if expects_level else '2-D'}, but "
                         f"has dims {da.dims}")
    if "time" not in da.dims:
        raise ValueError(f"{what} has no time dimension; dims are {da.dims}")
    da = _in_window(to_datetime64(da), window, what)
    scale, offset = units.affine(VARIABLE_ATTRS[name]["units"], source_units, what)
    da = da * scale + offset if offset else da * scale
    if name in NON_NEGATIVE:
        da = da.clip(min=0.0)
    if expects_level:
        da = fill_below_ground(da)
    return _named(da, name, VARIABLE_ATTRS[name])


def _as_static(da: xr.DataArray, name: str, what: str) -> xr.DataArray:
    """Canonical static ``name`` (lat, lon); the first time step if the source stores one."""
    source_units = da.attrs.get("units")
    if "time" in da.dims:
        da = da.isel(time=0)
    da = canonical_coords(da, what)
    scale, offset = units.affine(name, source_units, what)
    return _named(da * scale + offset, name, STATIC_ATTRS[name])


def _named(da: xr.DataArray, name: str, attrs: dict[str, str]) -> xr.DataArray:
    """float32 copy called ``name`` carrying only the store's CF attrs (source attrs would mislead
    once units changed)."""
    out = da.astype(np.float32).rename(name)
    out.attrs = dict(attrs)
    return out


def _field_name(var: xr.DataArray, var_name: str, names: dict[str, str], rename: Mapping[str, str]) -> str | None:
    """Our short name for a source variable: the user's map, its own name, else its CF standard_name."""
    if var_name in rename:
        return rename[var_name]
    if var_name in names:
        return names[var_name]
    has_level = any(_DIM_ALIASES.get(d, d) == "level" for d in var.dims)
    by_standard = STANDARD_NAMES.get(var.attrs.get("standard_name", ""), (None, None))
    return by_standard[1] if has_level else by_standard[0]


# --------------------------------------------------------------------------- CMIP6 netCDF
_TIME_CODER = xr.coders.CFDatetimeCoder(use_cftime=True)


def _main_variable(ds: xr.Dataset, path: Path, rename: Mapping[str, str]) -> str:
    """The one data variable of a CMIP-style file (the one the user's map names, the ``variable_id``
    attr, else the only gridded one)."""
    renamed = [n for n in ds.data_vars if n in rename]
    if len(renamed) == 1:
        return renamed[0]
    variable_id = ds.attrs.get("variable_id")
    if variable_id in ds.data_vars:
        return variable_id
    gridded = [n for n, v in ds.data_vars.items()
               if {"lat", "latitude"} & set(v.dims) and {"lon", "longitude"} & set(v.dims)]
    if len(gridded) != 1:
        raise ValueError(f"{path} must hold exactly one gridded variable (CMIP6 convention), "
                         f"found {gridded or list(ds.data_vars)}")
    return gridded[0]


def open_cmip6(paths: list[Path], *, rename: Mapping[str, str] | None = None,
               time: TimeWindow | None = None) -> SourceFields:
    """Open CMIP6-style netCDF files lazily (one variable per file; several files per variable are
    concatenated along time) as canonical fields and statics (``orog``, ``sftlf``).

    rename: the user's variable map (source name -> ORBIT name); time: ``(START, END)`` window.
    Raises ValueError for files whose variable ORBIT does not know, or that cannot be joined.
    """
    rename = check_rename(rename)
    groups: dict[str, list[tuple[Path, xr.Dataset]]] = {}
    known = sorted({**CMIP6_NAMES, **CMIP6_STATIC_NAMES})
    found: set[str] = set()
    for path in paths:
        ds = xr.open_dataset(path, decode_times=_TIME_CODER)  # lazy; chunked below, before any arithmetic
        found |= set(map(str, ds.data_vars))
        var_name = _main_variable(ds, path, rename)
        var = ds[var_name]
        name = rename.get(var_name) or CMIP6_STATIC_NAMES.get(var_name) or _field_name(var, var_name, CMIP6_NAMES,
                                                                                       rename)
        if name is None:
            raise ValueError(f"{path} holds variable {var_name!r} (standard_name "
                             f"{var.attrs.get('standard_name')!r}), which ORBIT does not know; known CMIP6 "
                             f"names: {known} or the CF standard_names {sorted(STANDARD_NAMES)}; or name it "
                             f"with a variable map (CLI: --rename {var_name}=t2m)")
        groups.setdefault(name, []).append((path, ds[[var_name]].rename({var_name: name})))
    _check_renamed(rename, found)
    chunked = iter(_chunked([ds for group in groups.values() for _, ds in group]))
    groups = {name: [(path, next(chunked)) for path, _ in group] for name, group in groups.items()}
    fields, statics = {}, {}
    for name, group in groups.items():
        what = f"variable '{name}' (from {group[0][0].name}{' ...' if len(group) > 1 else ''})"
        var = _concat_in_time(group, name)
        if name in STATIC_ATTRS:
            statics[name] = _as_static(var, name, what)
        else:
            fields[name] = _as_field(var, name, what, time)
    first = next(iter(groups.values()))[0][1]
    attrs = {k: str(v) for k, v in first.attrs.items()
             if k in ("source_id", "experiment_id", "institution", "variant_label")}
    return SourceFields(fields=fields, statics=statics, kind="model", attrs=attrs,
                        notes=["CMIP6 below-ground NaN filled from the nearest level above"])


def _concat_in_time(group: list[tuple[Path, xr.Dataset]], name: str) -> xr.DataArray:
    """One variable from one or several files, joined along time in time order."""
    if len(group) == 1:
        return group[0][1][name]
    try:
        ds = xr.combine_by_coords([ds for _, ds in group], data_vars="minimal", coords="minimal",
                                  compat="override", join="override", combine_attrs="drop_conflicts")
    except (ValueError, TypeError) as err:
        raise ValueError(f"cannot join the {len(group)} files of variable '{name}' along time ({err}); "
                         f"files of one variable must come from one model run, share a grid and not "
                         f"overlap in time: {[p.name for p, _ in group]}") from err
    return ds[name]


# --------------------------------------------------------------------------- ERA5 zarr
def open_era5(path: str | os.PathLike, *, rename: Mapping[str, str] | None = None,
              time: TimeWindow | None = None) -> SourceFields:
    """Open an ERA5 / WeatherBench2-style zarr store lazily as canonical fields and statics.

    Variables ORBIT does not know are ignored (WB2 stores hold dozens); statics come from
    ``geopotential_at_surface`` (-> orography in m) and ``land_sea_mask`` when present.
    rename: the user's variable map (source name -> ORBIT name); time: ``(START, END)`` window.
    """
    rename = check_rename(rename)
    ds = xr.open_zarr(path, consolidated=None, chunks=None)  # lazy; chunked below, before any arithmetic
    _check_renamed(rename, set(map(str, ds.data_vars)))
    known = [n for n, v in ds.data_vars.items() if "time" in v.dims
             and (n in rename or n in ERA5_NAMES or v.attrs.get("standard_name") in STANDARD_NAMES)]
    ds = ds.drop_vars([n for n, v in ds.data_vars.items() if "time" in v.dims and n not in known])
    ds = _chunked([ds])[0]
    fields, statics = {}, {}
    static_names = {**ERA5_STATIC_NAMES, **{k: v for k, v in rename.items() if v in STATIC_ATTRS}}
    for var_name, var in ds.data_vars.items():
        what = f"ERA5 variable {var_name!r}"
        if var_name in static_names:
            statics[static_names[var_name]] = _as_static(var, static_names[var_name], what)
            continue
        name = _field_name(var, str(var_name), ERA5_NAMES, rename)
        if name is not None and "time" in var.dims:
            fields[name] = _as_field(var, name, what, time)
    if not fields:
        raise ValueError(f"{path} holds no variable ORBIT knows; found {list(ds.data_vars)}, "
                         f"known ERA5 names: {sorted(ERA5_NAMES)}")
    return SourceFields(fields=fields, statics=statics, kind="reanalysis",
                        attrs={k: str(v) for k, v in ds.attrs.items() if k in ("title", "institution")})
