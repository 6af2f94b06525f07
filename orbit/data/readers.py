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
- Units are converted from the ``units`` attribute (``pr`` kg m-2 s-1 -> mm per 6 h, ``zg`` m ->
  geopotential m2 s-2, ...); unknown units are an error rather than a silent guess.
- CMIP6 masks pressure levels below the ground (NaN). Those values are filled with the value of the
  nearest valid level above, on all levels of the file before any level is selected, because a
  store must be finite and this keeps the fill as local as the file allows.
- Precipitation and specific humidity are clipped at 0: reanalysis and model output carry tiny
  negative packing noise.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from orbit.data.store import STATIC_ATTRS, VARIABLE_ATTRS

GRAVITY = 9.80665  # m s-2, WMO standard gravity: geopotential = g * geopotential height
SECONDS_PER_6H = 6 * 3600
TIME_CHUNK = 256  # time steps per dask chunk: netCDF3 files arrive one step per chunk

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

# Unit spellings (after `_unit_key`) -> factor into the store's unit, per variable.
_UNIT_FACTORS: dict[str, dict[str, float]] = {
    "K": {"k": 1.0},
    "m s-1": {"m s-1": 1.0, "m/s": 1.0},
    "mm": {"kg m-2 s-1": SECONDS_PER_6H, "mm s-1": SECONDS_PER_6H, "m": 1000.0, "mm": 1.0},
    "m2 s-2": {"m2 s-2": 1.0, "m2/s2": 1.0, "m": GRAVITY},
    "kg kg-1": {"kg kg-1": 1.0, "kg/kg": 1.0, "1": 1.0},
    "orography": {"m": 1.0, "m2 s-2": 1.0 / GRAVITY, "m2/s2": 1.0 / GRAVITY},
    "land_sea_mask": {"%": 0.01, "1": 1.0, "0-1": 1.0, "(0 - 1)": 1.0},
}
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


def unit_factor(target: str, units: str | None, what: str) -> float:
    """Factor that brings ``units`` into the store unit ``target``; ValueError for unknown units."""
    table = _UNIT_FACTORS[target]
    key = _unit_key(units or "")
    if key not in table:
        raise ValueError(f"{what} has units {units!r}, which ORBIT cannot convert to {target!r}; "
                         f"known units: {sorted(table)}")
    return table[key]


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


def _as_field(da: xr.DataArray, name: str, what: str) -> xr.DataArray:
    """Canonical field ``name`` from a raw variable: coords, time, units, sign, dtype, attrs."""
    units = da.attrs.get("units")
    da = canonical_coords(da, what)
    expects_level = name in THREE_D
    if expects_level != ("level" in da.dims):
        raise ValueError(f"{what} maps to '{name}', which is {'3-D' if expects_level else '2-D'}, but "
                         f"has dims {da.dims}")
    if "time" not in da.dims:
        raise ValueError(f"{what} has no time dimension; dims are {da.dims}")
    da = to_datetime64(da)
    target = VARIABLE_ATTRS[name]["units"]
    da = da * unit_factor(target, units, what)
    if name in NON_NEGATIVE:
        da = da.clip(min=0.0)
    if expects_level:
        da = fill_below_ground(da)
    return _named(da.chunk({"time": TIME_CHUNK}), name, VARIABLE_ATTRS[name])


def _as_static(da: xr.DataArray, name: str, what: str) -> xr.DataArray:
    """Canonical static ``name`` (lat, lon); the first time step if the source stores one."""
    units = da.attrs.get("units")
    if "time" in da.dims:
        da = da.isel(time=0)
    da = canonical_coords(da, what)
    da = da * unit_factor(name, units, what)
    return _named(da, name, STATIC_ATTRS[name])


def _named(da: xr.DataArray, name: str, attrs: dict[str, str]) -> xr.DataArray:
    """float32 copy called ``name`` carrying only the store's CF attrs (source attrs would mislead
    once units changed)."""
    out = da.astype(np.float32).rename(name)
    out.attrs = dict(attrs)
    return out


def _field_name(var: xr.DataArray, var_name: str, names: dict[str, str]) -> str | None:
    """Our short name for a source variable: by its own name, else by CF standard_name."""
    if var_name in names:
        return names[var_name]
    has_level = any(_DIM_ALIASES.get(d, d) == "level" for d in var.dims)
    by_standard = STANDARD_NAMES.get(var.attrs.get("standard_name", ""), (None, None))
    return by_standard[1] if has_level else by_standard[0]


# --------------------------------------------------------------------------- CMIP6 netCDF
_TIME_CODER = xr.coders.CFDatetimeCoder(use_cftime=True)


def _main_variable(ds: xr.Dataset, path: Path) -> str:
    """The one data variable of a CMIP-style file (``variable_id`` attr, else the only gridded one)."""
    variable_id = ds.attrs.get("variable_id")
    if variable_id in ds.data_vars:
        return variable_id
    gridded = [n for n, v in ds.data_vars.items()
               if {"lat", "latitude"} & set(v.dims) and {"lon", "longitude"} & set(v.dims)]
    if len(gridded) != 1:
        raise ValueError(f"{path} must hold exactly one gridded variable (CMIP6 convention), "
                         f"found {gridded or list(ds.data_vars)}")
    return gridded[0]


def open_cmip6(paths: list[Path]) -> SourceFields:
    """Open CMIP6-style netCDF files (one variable per file; several files per variable are
    concatenated along time) as canonical fields and statics (``orog``, ``sftlf``).

    Raises ValueError for files whose variable ORBIT does not know, or that cannot be joined.
    """
    groups: dict[str, list[tuple[Path, xr.Dataset]]] = {}
    known = sorted({**CMIP6_NAMES, **CMIP6_STATIC_NAMES})
    for path in paths:
        ds = xr.open_dataset(path, decode_times=_TIME_CODER, chunks={})
        var_name = _main_variable(ds, path)
        var = ds[var_name]
        name = CMIP6_STATIC_NAMES.get(var_name) or _field_name(var, var_name, CMIP6_NAMES)
        if name is None:
            raise ValueError(f"{path} holds variable {var_name!r} (standard_name "
                             f"{var.attrs.get('standard_name')!r}), which ORBIT does not know; known CMIP6 "
                             f"names: {known} or the CF standard_names {sorted(STANDARD_NAMES)}")
        groups.setdefault(name, []).append((path, ds[[var_name]].rename({var_name: name})))
    fields, statics = {}, {}
    for name, group in groups.items():
        what = f"variable '{name}' (from {group[0][0].name}{' ...' if len(group) > 1 else ''})"
        var = _concat_in_time(group, name)
        if name in STATIC_ATTRS:
            statics[name] = _as_static(var, name, what)
        else:
            fields[name] = _as_field(var, name, what)
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
def open_era5(path: str | os.PathLike) -> SourceFields:
    """Open an ERA5 / WeatherBench2-style zarr store as canonical fields and statics.

    Variables ORBIT does not know are ignored (WB2 stores hold dozens); statics come from
    ``geopotential_at_surface`` (-> orography in m) and ``land_sea_mask`` when present.
    """
    ds = xr.open_zarr(path, consolidated=None)
    fields, statics = {}, {}
    for var_name, var in ds.data_vars.items():
        what = f"ERA5 variable {var_name!r}"
        if var_name in ERA5_STATIC_NAMES:
            statics[ERA5_STATIC_NAMES[var_name]] = _as_static(var, ERA5_STATIC_NAMES[var_name], what)
            continue
        name = _field_name(var, str(var_name), ERA5_NAMES)
        if name is not None and "time" in var.dims:
            fields[name] = _as_field(var, name, what)
    if not fields:
        raise ValueError(f"{path} holds no variable ORBIT knows; found {list(ds.data_vars)}, "
                         f"known ERA5 names: {sorted(ERA5_NAMES)}")
    return SourceFields(fields=fields, statics=statics, kind="reanalysis",
                        attrs={k: str(v) for k, v in ds.attrs.items() if k in ("title", "institution")})
