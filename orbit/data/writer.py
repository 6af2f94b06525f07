"""Write an ORBIT store one time block at a time: bounded memory, resumable, atomic.

Every store (``orbit data synth``, ``orbit data convert``, :func:`write_store`) is written the same way:

1. the layout is checked on a *template* (the fields' coordinates, dims and dtypes; no values are
   read), before any work;
2. the empty store (metadata, coordinates, statics) goes into ``<name>.partial/store.zarr``;
3. a *producer* yields the fields block after block (a lazily opened input read window by window, or
   the toy Earth stepping on); each block is checked for NaN/Inf, written into its time region and
   added to the streaming statistics (:mod:`orbit.data.statistics`), so memory holds one block;
4. every :data:`CHECKPOINT_SECONDS` the progress (steps done, statistics, producer state) is saved
   atomically to ``<name>.partial/progress.npz``: running the same command again after a crash or
   a kill continues from there, and a partial store of other arguments is discarded;
5. the statistics are written, metadata consolidated and the store renamed onto its final name
   (:func:`orbit.atomic.move_into_place`): the final name only ever holds a complete store.

Bad data (NaN/Inf) found mid-way raises ValueError and deletes the partial store; any other
interruption keeps it for resuming.

Chunks: one time step per chunk with all levels, lat and lon (``(1, [L,] H, W)``): a training sample
reads two time steps of every channel, so each read touches exactly the chunks it needs. Grids so small
that a step is under :data:`MIN_CHUNK_BYTES` (32x64 and below) put several steps in a chunk rather than
write thousands of files of a few KiB.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time as clock
from collections.abc import Callable, Iterator
from pathlib import Path

import dask.array
import numpy as np
import xarray as xr
from tqdm import tqdm

from orbit.atomic import move_into_place, remove
from orbit.data.statistics import StreamingStatistics
from orbit.data.store import (FIELD_DIMS_2D, FIELD_DIMS_3D, HARMONICS, KINDS, STATIC_ATTRS, STATIC_NAMES,
                              STORE_VERSION, VARIABLE_ATTRS, _channel_map, _field_names, open_store)

BLOCK_BYTES = 256 << 20  # fields held in memory at once when the producer may choose the block length
CHECKPOINT_SECONDS = 60.0  # how much work an interruption may cost
MIN_CHUNK_BYTES = 64 << 10  # from 128x256 up one time step per chunk; small grids get several (fewer files)

Producer = Callable[[int, dict], Iterator[tuple[xr.Dataset, dict]]]
"""``producer(start, state)`` yields ``(fields of the next block of time steps, state after it)`` from
time index ``start`` on; ``state`` is what it yielded last (``{}`` at the start), arrays only, so that it
can be saved beside the partial store."""


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


def _check_fields(ds: xr.Dataset) -> None:
    """Names, dims and dtypes (metadata only: values are checked block by block while writing)."""
    if not _field_names(ds):
        raise ValueError(f"dataset has no field variables with a 'time' dim; got {list(ds.data_vars)}")
    for name in ds.data_vars:
        dims = ds[name].dims
        if dims not in (FIELD_DIMS_2D, FIELD_DIMS_3D):
            raise ValueError(f"variable '{name}' has dims {dims}; fields must have dims "
                             f"{FIELD_DIMS_2D} or {FIELD_DIMS_3D} (pass statics separately)")
        if ds[name].dtype != np.float32:
            raise ValueError(f"variable '{name}' has dtype {ds[name].dtype}; fields must be float32")


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


def _years(times: np.ndarray) -> np.ndarray:
    return times.astype("datetime64[Y]").astype(int) + 1970


def _check_train_years(times: np.ndarray, train_years: tuple[int, int]) -> None:
    start, end = train_years
    if start > end:
        raise ValueError(f"train_years must be (start, end) with start <= end, got {train_years}")
    years = _years(times)
    steps = int(((years >= start) & (years <= end)).sum())
    if steps < len(HARMONICS):
        raise ValueError(f"train_years {train_years} select {steps} time steps; need at least "
                         f"{len(HARMONICS)} (data covers {years.min()}-{years.max()})")


def _check_block(block: xr.Dataset, times: np.ndarray) -> None:
    if block.sizes.get("time", 0) != times.size or not np.array_equal(
            block["time"].values.astype("datetime64[ns]"), times):
        raise ValueError(f"the producer yielded times {block['time'].values[:1]}... for the block starting at "
                         f"{times[:1]}; it must yield the template's times in order")
    for name in block.data_vars:
        bad = int((~np.isfinite(block[name].values)).sum())
        if bad:
            span = np.datetime_as_string(times[[0, -1]], unit="h")
            raise ValueError(f"variable '{name}' has {bad} NaN/Inf values between {span[0]} and {span[1]}; "
                             f"fields must be finite (fill or drop missing data before writing)")


# --------------------------------------------------------------------------- layout
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


def _empty_store(template: xr.Dataset, statics: xr.Dataset | None, attrs: dict) -> xr.Dataset:
    """The store without field values: lazy zeros chunked one time step per chunk (several on small
    grids), plus statics."""
    fields = {}
    for name in _field_names(template):
        var = template[name]
        steps = int(np.clip(MIN_CHUNK_BYTES // (var[0].size * 4), 1, var.sizes["time"]))
        chunks = tuple(steps if d == "time" else n for d, n in var.sizes.items())
        fields[name] = xr.Variable(var.dims, dask.array.zeros(var.shape, chunks=chunks, dtype=np.float32),
                                   var.attrs, encoding={"chunks": chunks})
    out = xr.Dataset(fields, coords={c: template[c] for c in template.coords if c in template.dims})
    lat2d = np.broadcast_to(out["lat"].values[:, None].astype(np.float32), (out.sizes["lat"], out.sizes["lon"]))
    static_vars = {"latitude_2d": (("lat", "lon"), np.array(lat2d))}
    if statics is not None:
        static_vars.update({n: (("lat", "lon"), v.values.astype(np.float32)) for n, v in statics.data_vars.items()})
    out = _canonical(out.assign(static_vars))
    out.attrs = attrs
    return out


def steps_per_block(template: xr.Dataset) -> int:
    """Time steps of all fields that fit in :data:`BLOCK_BYTES`."""
    step = sum(int(np.prod(template[n].shape[1:])) * 4 for n in _field_names(template))
    return max(1, BLOCK_BYTES // step)


# --------------------------------------------------------------------------- resuming
def _fingerprint(template: xr.Dataset, statics: xr.Dataset | None, meta: dict) -> str:
    """Identifies what is being written: a partial store resumes only under the same fingerprint."""
    digest = hashlib.sha256()
    for coord in ("time", "lat", "lon", *(["level"] if "level" in template.coords else [])):
        digest.update(np.ascontiguousarray(template[coord].values).tobytes())
    layout = {n: [list(v.dims), list(v.shape)] for n, v in template.data_vars.items()}
    statics_sum = None if statics is None else {n: float(v.sum()) for n, v in statics.data_vars.items()}
    digest.update(json.dumps([layout, statics_sum, meta], sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _load_progress(partial: Path, fingerprint: str) -> dict[str, np.ndarray] | None:
    """The saved progress of ``partial`` if it was written under ``fingerprint``; else discard it."""
    progress = partial / "progress.npz"
    if progress.exists():
        with np.load(progress) as saved:
            if str(saved["fingerprint"]) == fingerprint:
                return dict(saved)
    if partial.exists():
        print(f"orbit: discarding {partial} (a partial store of other arguments or without progress)",
              file=sys.stderr)
        remove(partial)
    return None


def _save_progress(partial: Path, fingerprint: str, done: int, stats: StreamingStatistics, state: dict) -> None:
    tmp = partial / "progress.tmp.npz"
    np.savez(tmp, fingerprint=np.array(fingerprint), done=np.array(done),
             **{f"stats.{k}": v for k, v in stats.state_dict().items()},
             **{f"state.{k}": np.asarray(v) for k, v in state.items()})
    os.replace(tmp, partial / "progress.npz")


# --------------------------------------------------------------------------- writing
def write_blocks(template: xr.Dataset, produce: Producer, path: str | os.PathLike, *, source: str, kind: str,
                 train_years: tuple[int, int], statics: xr.Dataset | None = None, attrs: dict | None = None,
                 overwrite: bool = False, progress: bool = False, resume_key: str = "") -> xr.Dataset:
    """Write the store ``path`` from the blocks of ``produce`` (see the module docstring); reopen it.

    template: the fields' coordinates, dims and dtypes (values are never read). resume_key: anything
    else that decides the content (e.g. input file sizes), part of the partial store's fingerprint.
    progress: show a progress bar on a terminal.
    Raises ValueError / FileExistsError before any work for a bad layout or an existing ``path``.
    """
    path = Path(path)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"store {path} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    _check_coords(template)
    _check_fields(template)
    if statics is not None:
        _check_statics(statics, template)
    times = template["time"].values.astype("datetime64[ns]")
    train_years = (int(train_years[0]), int(train_years[1]))
    _check_train_years(times, train_years)
    train = f"{train_years[0]:04d}-{train_years[1]:04d}"
    global_attrs = {
        "source": source, "kind": kind, "title": f"ORBIT store for {source}", "institution": "unknown",
        "history": "written by orbit.data.writer", **(attrs or {}),
        "grid": f"{template.sizes['lat']}x{template.sizes['lon']}", "train_years": train,
        "orbit_store_version": STORE_VERSION,
    }
    channels = _channel_map(template)
    stats = StreamingStatistics(list(channels), (template.sizes["lat"], template.sizes["lon"]))
    fingerprint = _fingerprint(template, statics, {"attrs": global_attrs, "key": resume_key})

    partial = path.with_name(f"{path.name}.partial")
    target = partial / "store.zarr"
    saved = _load_progress(partial, fingerprint)
    done, state = 0, {}
    if saved is None:
        partial.mkdir(parents=True)
        _empty_store(template, statics, global_attrs).to_zarr(target, mode="w", compute=False, zarr_format=2,
                                                              consolidated=False)
    else:
        done = int(saved["done"])
        stats.load_state_dict({k[6:]: v for k, v in saved.items() if k.startswith("stats.")})
        state = {k[6:]: v for k, v in saved.items() if k.startswith("state.")}
    level_index = {int(v): i for i, v in enumerate(template["level"].values)} if "level" in template.coords else {}
    in_train = (_years(times) >= train_years[0]) & (_years(times) <= train_years[1])

    bar = tqdm(total=times.size, initial=done, unit="step", desc=f"writing {path.name}", disable=None if progress else True)
    last_save = clock.monotonic()
    try:
        position = done
        for block, state in produce(done, state):
            stop = position + block.sizes["time"]
            block_times = times[position:stop]
            _check_block(block, block_times)
            values = xr.Dataset({n: (template[n].dims, block[n].transpose(*template[n].dims).values)
                                 for n in template.data_vars})
            values.to_zarr(target, region={"time": slice(position, stop)}, zarr_format=2, consolidated=False)
            mask = in_train[position:stop]
            if mask.any():
                for k, (name, level) in enumerate(channels.values()):
                    var = values[name] if level is None else values[name].isel(level=level_index[level])
                    stats.update(block_times[mask], var.values[mask], k)
                stats.advance(block_times[mask])
            position = stop
            bar.update(block.sizes["time"])
            if clock.monotonic() - last_save > CHECKPOINT_SECONDS and position < times.size:
                _save_progress(partial, fingerprint, position, stats, state)
                last_save = clock.monotonic()
        if position != times.size:
            raise ValueError(f"the producer stopped after {position} of {times.size} time steps")
    except ValueError:
        remove(partial)  # bad data: resuming would meet it again
        raise
    finally:
        bar.close()

    result = stats.result()
    result["norm_mean"].attrs["stats_years"] = result["norm_std"].attrs["stats_years"] = train
    result.attrs = global_attrs  # appending replaces the group's attributes
    result.to_zarr(target, mode="a", zarr_format=2, consolidated=True)
    if path.exists() and not overwrite:
        raise FileExistsError(f"store {path} appeared while writing; pass overwrite=True to replace it")
    move_into_place(target, path)
    remove(partial)
    return open_store(path)


def dataset_producer(ds: xr.Dataset) -> Producer:
    """Blocks of an in-memory or lazily opened (dask) dataset: along its dask chunks in time, so that
    every input chunk is read once, else :func:`steps_per_block` steps at a time."""
    def produce(start: int, state: dict) -> Iterator[tuple[xr.Dataset, dict]]:
        if any(var.chunks for var in ds.data_vars.values()):  # variables may be chunked differently
            edges = np.cumsum([0, *ds.unify_chunks().chunksizes["time"]]).tolist()
        else:
            edges = [*range(0, ds.sizes["time"], steps_per_block(ds)), ds.sizes["time"]]
        if start not in edges:
            raise ValueError(f"cannot resume at time step {start}: not a block edge of this input")
        for a, b in zip(edges[edges.index(start):-1], edges[edges.index(start) + 1:]):
            yield ds.isel(time=slice(a, b)).compute(), {}

    return produce


def write_store(ds_fields: xr.Dataset, path: str | os.PathLike, *, source: str, kind: str,
                train_years: tuple[int, int], statics: xr.Dataset | None = None, attrs: dict | None = None,
                overwrite: bool = False, progress: bool = False, resume_key: str = "") -> xr.Dataset:
    """Validate ``ds_fields`` (in memory or lazy), add statics, norm stats and climatology, write, reopen.

    Memory holds one block of ``ds_fields`` at a time. Raises ValueError for a non-canonical layout
    and FileExistsError if ``path`` exists and ``overwrite`` is False, before reading any values.
    """
    return write_blocks(ds_fields, dataset_producer(ds_fields), path, source=source, kind=kind,
                        train_years=train_years, statics=statics, attrs=attrs, overwrite=overwrite,
                        progress=progress, resume_key=resume_key)
