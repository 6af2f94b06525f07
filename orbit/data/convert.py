"""``orbit data convert``: real CMIP6 netCDF files or an ERA5 / WeatherBench2 zarr store -> an ORBIT store.

Steps: check the arguments (before any data is read) -> open and canonicalize lazily
(:mod:`orbit.data.readers`) -> select variables and pressure levels -> regrid (:mod:`orbit.data.regrid`)
-> keep the times every variable has -> :func:`orbit.data.writer.write_store`, which adds the
normalization statistics and the climatology of the training years.

The native time step is kept: 6-hourly reanalysis stays 6-hourly, monthly or daily CMIP6 output
stays monthly or daily, and the store records it in the ``time_step`` attribute ('6h', '1D', '1M',
'1Y'). Nothing is interpolated in time.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from orbit.data import readers, regrid, store, writer

FORMATS = ("auto", "cmip6", "era5")
NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf", ".cdf")
TEST_FRACTION = 0.2  # default: the last 20 % of the years are held out of the statistics


def convert(inputs: Sequence[str | os.PathLike], output: str | os.PathLike, *, fmt: str = "auto",
            grid: tuple[int, int] | None = None, variables: Sequence[str] | None = None,
            levels: Sequence[int] | None = None, source: str, train_years: tuple[int, int] | None = None,
            overwrite: bool = False, method: str = "auto", allow_regional: bool = False,
            time: tuple[str, str] | None = None, rename: Mapping[str, str] | None = None,
            progress: bool = False) -> Path:
    """Convert ``inputs`` into the ORBIT store ``output`` and return its path.

    inputs: CMIP6-style netCDF files (one variable per file, several files per variable are joined
    in time; ``orog``/``sftlf`` files become statics) or one ERA5/WB2 zarr store.
    grid: ``(H, W)`` target grid, or None to keep the native grid (which must then be regular).
    variables: store names to keep (``t2m``, ``u10``, ``v10``, ``tp``, ``z``, ``t``, ``u``, ``v``,
    ``q``); None keeps every known variable found. levels: hPa levels of the 3-D variables; None
    keeps all levels of the input. train_years: ``(first, last)`` years of the statistics; None uses
    all years but the last 20 %. method: ``auto``, ``bilinear`` or ``conservative``.
    allow_regional: accept a source that does not cover the globe (see :mod:`orbit.data.regrid`).
    time: ``(START, END)`` dates, both inclusive as ``sel(time=slice(START, END))``: only that window
    is read. rename: the user's variable map, source name -> ORBIT name (e.g. ``{"air": "t2m"}``).
    progress: show a progress bar on a terminal.

    Inputs are opened lazily and written one block of time steps at a time (memory: one block, whatever
    the length); an interrupted conversion resumes when run again with the same arguments.
    Raises FileNotFoundError / FileExistsError / ValueError before reading any data values.
    """
    paths = _check_inputs(inputs)
    fmt = _resolve_format(paths, fmt)
    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"output store {output} already exists; pass overwrite=True (CLI: --overwrite)")
    unknown = sorted(set(variables or ()) - set(readers.VARIABLES))
    if unknown:
        raise ValueError(f"unknown variable name(s) {unknown}; valid ORBIT names: {list(readers.VARIABLES)}")
    if grid is not None:
        regrid.target_grid(grid)  # validates the shape
    if method not in regrid.METHODS:
        raise ValueError(f"unknown regridding method {method!r}; valid: {list(regrid.METHODS)}")
    time = readers.check_time_window(time)
    rename = readers.check_rename(rename)

    if fmt == "cmip6":
        data = readers.open_cmip6(paths, rename=rename, time=time)
    else:
        data = readers.open_era5(paths[0], rename=rename, time=time)
    fields = _select_variables(data.fields, variables, fmt)
    fields = _select_levels(fields, levels)
    grids = {name: regrid.source_grid(da["lat"].values, da["lon"].values) for name, da in fields.items()}
    target = _plan_grid(grids, grid, allow_regional)
    method_used = {name: _method(src, target, method) for name, src in grids.items()}
    fields = {name: _regridded(da, grids[name], target, method_used[name]) for name, da in fields.items()}
    statics = _regrid_statics(data.statics, target, method)

    ds = _merge_in_time(fields)
    years = _train_years(ds["time"].values, train_years)
    attrs = {
        **data.attrs,
        "time_step": readers.infer_time_step(ds["time"].values),
        "history": _history(fmt, paths, grids, target, method_used, data.notes, time, rename),
    }
    writer.write_store(ds, output, source=source, kind=data.kind, train_years=years, statics=statics,
                       attrs=attrs, overwrite=overwrite, progress=progress, resume_key=_inputs_key(paths))
    return output


# --------------------------------------------------------------------------- argument checks
def _check_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not inputs:
        raise ValueError("no input files given; pass CMIP6 netCDF files or one ERA5 zarr store")
    paths = [Path(p) for p in inputs]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"input(s) not found: {missing}")
    return paths


def _resolve_format(paths: list[Path], fmt: str) -> str:
    """'auto' -> 'era5' for a zarr store (a directory or *.zarr), 'cmip6' for netCDF files."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; valid: {list(FORMATS)}")
    zarr = [p for p in paths if p.is_dir() or p.suffix == ".zarr"]
    netcdf = [p for p in paths if p.suffix.lower() in NETCDF_SUFFIXES and p not in zarr]
    if fmt == "auto":
        if zarr and not netcdf:
            fmt = "era5"
        elif netcdf and len(netcdf) == len(paths):
            fmt = "cmip6"
        else:
            raise ValueError(f"cannot tell the format of {[str(p) for p in paths]}: expected netCDF files "
                             f"({', '.join(NETCDF_SUFFIXES)}) or one zarr store; pass fmt='cmip6' or 'era5'")
    if fmt == "era5" and (len(paths) != 1 or not paths[0].is_dir()):
        raise ValueError(f"format 'era5' reads one zarr store (a directory), got {[str(p) for p in paths]}")
    if fmt == "cmip6" and any(p.is_dir() for p in paths):
        raise ValueError(f"format 'cmip6' reads netCDF files, got directories "
                         f"{[str(p) for p in paths if p.is_dir()]}")
    return fmt


# --------------------------------------------------------------------------- selection
def _select_variables(fields: dict[str, xr.DataArray], variables: Sequence[str] | None,
                      fmt: str) -> dict[str, xr.DataArray]:
    """The requested variables in the store's canonical order (2-D first, then 3-D)."""
    if not fields:
        raise ValueError(f"the {fmt} input holds no time-dependent field (only statics?); ORBIT fields are "
                         f"{list(readers.VARIABLES)}")
    wanted = list(variables) if variables else list(fields)
    absent = [v for v in wanted if v not in fields]
    if absent:
        raise ValueError(f"variable(s) {absent} are not in the {fmt} input; it holds {sorted(fields)}")
    return {name: fields[name] for name in readers.VARIABLES if name in wanted}


def _select_levels(fields: dict[str, xr.DataArray], levels: Sequence[int] | None) -> dict[str, xr.DataArray]:
    """Pick ``levels`` (hPa) from every 3-D variable; with None all 3-D variables must share levels."""
    three_d = {name: da for name, da in fields.items() if "level" in da.dims}
    if levels is not None and not three_d:
        raise ValueError(f"levels {list(levels)} given, but none of the variables {list(fields)} has "
                         f"pressure levels")
    out = dict(fields)
    for name, da in three_d.items():
        available = da["level"].values
        if levels is None:
            chosen = available
            fractional = available[available != np.round(available)]
            if fractional.size:
                raise ValueError(f"variable '{name}' has levels {fractional.tolist()} hPa that are not whole "
                                 f"hPa; pass levels=[...] from {_fmt_levels(available)}")
        else:
            missing = [lv for lv in levels if not np.any(np.isclose(available, lv, atol=1e-3))]
            if missing:
                raise ValueError(f"variable '{name}' has no level(s) {missing} hPa; available levels: "
                                 f"{_fmt_levels(available)}")
            chosen = np.array(sorted(levels), dtype=np.float64)
        out[name] = da.sel(level=chosen, method="nearest").assign_coords(level=np.round(chosen).astype(np.int32))
    level_sets = {name: out[name]["level"].values.tolist() for name in three_d}
    if len({tuple(v) for v in level_sets.values()}) > 1:
        raise ValueError(f"3-D variables have different levels {level_sets}; pass levels=[...] with levels "
                         f"they all have")
    return out


def _fmt_levels(levels: np.ndarray) -> list:
    return [int(v) if v == round(v) else float(v) for v in levels]


# --------------------------------------------------------------------------- grid
def _plan_grid(grids: dict[str, regrid.Grid], shape: tuple[int, int] | None,
               allow_regional: bool) -> regrid.Grid:
    """The target grid, shared by all variables. With ``shape=None`` the native grid is kept, which
    must be regular and the same for every variable."""
    first_name, first = next(iter(grids.items()))
    if shape is None:
        different = [n for n, g in grids.items() if not regrid.same_grid(g, first)]
        if different:
            raise ValueError(f"variables {different} are on another grid than '{first_name}' "
                             f"({first.describe()}); pass grid=(H, W) to regrid them onto one grid")
        if not regrid.is_regular(first):
            raise ValueError(f"the native grid ({first.describe()}) is not regular (spacing varies by more "
                             f"than {regrid.REGULAR_RTOL:.0%}); pass grid=(H, W) to regrid it")
        regrid.check_coverage(first, allow_regional, "a global store on the native grid",
                              "a regional store on the native grid")
        return first
    targets = {name: regrid.target_grid(shape, g, allow_regional=allow_regional) for name, g in grids.items()}
    target = targets[first_name]
    differ = [n for n, t in targets.items() if not regrid.same_grid(t, target)]
    if differ:
        raise ValueError(f"variables {differ} cover another region than '{first_name}' ({first.describe()}), "
                         f"so no common regional grid exists; convert them separately")
    return target


def _regridded(da: xr.DataArray, source: regrid.Grid, target: regrid.Grid, method: str) -> xr.DataArray:
    """``da`` on ``target`` (exactly its coordinates, so that variables align when merged)."""
    if method == "none":
        return da.assign_coords(lat=target.lat, lon=target.lon)
    return regrid.regrid(da, source, target, method, non_negative=da.name in readers.NON_NEGATIVE)


def _method(source: regrid.Grid, target: regrid.Grid, method: str) -> str:
    return "none" if regrid.same_grid(source, target) else regrid.choose_method(source, target, method)


def _regrid_statics(statics: dict[str, xr.DataArray], target: regrid.Grid, method: str) -> xr.Dataset | None:
    """Statics on the fields' grid (None when the input has none)."""
    if not statics:
        return None
    out = {}
    for name, da in statics.items():
        src = regrid.source_grid(da["lat"].values, da["lon"].values)
        out[name] = _regridded(da, src, target, _method(src, target, method))
    return xr.Dataset(out)


# --------------------------------------------------------------------------- time
def _merge_in_time(fields: dict[str, xr.DataArray]) -> xr.Dataset:
    """One dataset on the times every variable has (ValueError if they share none)."""
    ds = xr.merge(list(fields.values()), join="inner", combine_attrs="drop")
    if ds.sizes["time"] == 0:
        spans = {n: f"{da['time'].values[0]}..{da['time'].values[-1]}" for n, da in fields.items()}
        raise ValueError(f"the variables share no time step: {spans}")
    return ds[list(fields)]


def _train_years(times: np.ndarray, train_years: tuple[int, int] | None) -> tuple[int, int]:
    """Default: all years but the last 20 % (at least one). Checked against the data."""
    years = np.unique(times.astype("datetime64[Y]").astype(int) + 1970)
    if train_years is None:
        n_train = max(1, years.size - math.ceil(TEST_FRACTION * years.size))
        train_years = (int(years[0]), int(years[n_train - 1]))
    first, last = (int(y) for y in train_years)
    if first > last or first > years[-1] or last < years[0]:
        raise ValueError(f"train_years {tuple(train_years)} do not overlap the data years "
                         f"{years[0]}-{years[-1]}; pass (first, last) within them")
    time_years = times.astype("datetime64[Y]").astype(int) + 1970
    steps = int(np.sum((time_years >= first) & (time_years <= last)))
    if steps < len(store.HARMONICS):
        raise ValueError(f"train_years {first}-{last} hold {steps} time steps; the climatology fit needs at "
                         f"least {len(store.HARMONICS)} (data covers {years[0]}-{years[-1]}); widen train_years")
    return first, last


def _history(fmt: str, paths: list[Path], grids: dict[str, regrid.Grid], target: regrid.Grid,
             methods: dict[str, str], notes: list[str], time: tuple[str, str] | None,
             rename: Mapping[str, str]) -> str:
    names = ", ".join(p.name for p in paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
    first = next(iter(grids.values()))
    regridding = "; ".join(f"{n}: {m}" for n, m in methods.items())
    selection = (f"; time {time[0]} .. {time[1]}" if time else "") + (f"; renamed {rename}" if rename else "")
    return (f"orbit data convert from {fmt} ({names}){selection}; source {first.describe()} -> "
            f"{target.describe()} [{regridding}]" + "".join(f"; {note}" for note in notes))


def _inputs_key(paths: list[Path]) -> str:
    """Size and modification time of every input file (of a zarr store: its metadata files, not its
    millions of chunks): a partial store of changed inputs is not resumed."""
    files = [f for p in paths for f in (sorted(p.iterdir()) if p.is_dir() else [p]) if f.is_file()]
    return ";".join(f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
