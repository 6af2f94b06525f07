"""ForecastDataset: (init time, lead) forecast pairs from one or more ORBIT stores.

Sources (one store each, e.g. several CMIP6 models and ERA5) share one grid and one GLOBAL
channel order chosen by the caller; a channel a source lacks is zero and masked out. A flat
index enumerates (source, valid init time) pairs, source after source. The lead is NOT part of
the index: the sampler picks it, so `dataset[(index, lead_hours)]` returns one `Sample`.
Everything is validated in the constructor, before any sample is read.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr
from torch.utils.data import Dataset

from orbit.data import store
from orbit.data.batch import Batch, Sample, collate

IN_MEMORY_LIMIT_BYTES = 2 * 2**30  # `in_memory=None` loads stores whose selection fits in this
NS_PER_HOUR = 3600 * 10**9


@dataclass
class _Source:
    """What the dataset needs about one store; `data` is filled only in in_memory mode."""

    name: str
    channels: list[str]  # global channels this store has, in global order
    channel_index: np.ndarray  # (C_src,) their positions in the global order
    mean: np.ndarray  # (V,) norm_mean in global order, 0 where absent
    std: np.ndarray  # (V,) norm_std in global order, 1 where absent
    times: np.ndarray  # (T_store,) datetime64[ns]
    step_ns: int
    init_index: np.ndarray  # (N_src,) store time indices of valid init times
    row_of_time: np.ndarray  # (T_store,) row of a selected time in `data`, -1 otherwise
    data: np.ndarray | None = None  # (T_selected, C_src, H, W) normalized float32


def _store_years(times: np.ndarray) -> np.ndarray:
    return times.astype("datetime64[Y]").astype(np.int64) + 1970


def _describe_grid(ds: xr.Dataset) -> str:
    lat, lon = ds["lat"].values, ds["lon"].values
    return (f"{lat.size}x{lon.size} (lat {lat[0]:.3f}..{lat[-1]:.3f}, lon {lon[0]:.3f}..{lon[-1]:.3f})")


def _years_by_source(years: Iterable[int] | Mapping[str, Iterable[int]], names: Sequence[str]) -> dict[str, set[int]]:
    if isinstance(years, Mapping):
        missing = [n for n in names if n not in years]
        if missing:
            raise ValueError(f"years given per source lack source(s) {missing}; sources are {list(names)}")
        chosen = {n: {int(y) for y in years[n]} for n in names}
    else:
        shared = {int(y) for y in years}
        chosen = {n: shared for n in names}
    empty = [n for n, ys in chosen.items() if not ys]
    if empty:
        raise ValueError(f"no years selected for source(s) {empty}; pass e.g. range(1979, 2016)")
    return chosen


def _valid_inits(times: np.ndarray, selected: np.ndarray, step_ns: int, max_steps: int) -> np.ndarray:
    """Store indices i whose times i..i+max_steps are all selected and evenly `step_ns` apart.

    `step_ns` is the smallest spacing, so time[i+K] - time[i] == K*step_ns means no gap in
    between; a store with missing steps keeps the init times that do not straddle a gap.
    """
    n_init = times.size - max_steps
    if n_init <= 0:
        return np.zeros(0, dtype=np.int64)
    counts = np.concatenate([[0], np.cumsum(selected)])
    all_selected = counts[max_steps + 1:] - counts[:n_init] == max_steps + 1
    span = (times[max_steps:] - times[:n_init]).astype(np.int64)
    return np.flatnonzero(all_selected & (span == max_steps * step_ns)).astype(np.int64)


class ForecastDataset(Dataset):
    """Map-style dataset of normalized forecast pairs over one or more stores.

    stores: source name -> store path; channels: the global channel order;
    years: the years to use, one collection for all sources or a mapping source -> years
    (an explicit collection, e.g. `range(1979, 2016)`; a tuple (1979, 2015) means those two years);
    lead_hours: the leads a sampler may ask for; each must be a multiple of every store's time step.
    An init time t is valid when every step from t to t + max(lead_hours) lies in the selected years.
    in_memory: load the selection of every store into RAM as normalized float32 once (None: when
    it fits in `IN_MEMORY_LIMIT_BYTES`); otherwise samples are read lazily from zarr, which also
    works inside DataLoader worker processes.
    """

    def __init__(self, stores: Mapping[str, str | os.PathLike], channels: Sequence[str],
                 years: Iterable[int] | Mapping[str, Iterable[int]], lead_hours: Sequence[float],
                 *, in_memory: bool | None = None):
        if not stores:
            raise ValueError("stores is empty; pass a mapping source name -> store path")
        self.channels = tuple(channels)
        if not self.channels or len(set(self.channels)) != len(self.channels):
            raise ValueError(f"channels must be a non-empty list of distinct names, got {list(channels)}")
        self.lead_hours = tuple(float(lead) for lead in lead_hours)
        if not self.lead_hours or min(self.lead_hours) < 0:
            raise ValueError(f"lead_hours must be a non-empty list of leads >= 0 h, got {list(lead_hours)}")
        self.sources = tuple(stores)
        self._paths = {name: os.fspath(path) for name, path in stores.items()}
        self._opened: dict[str, xr.Dataset] = {}
        self._opened_pid = os.getpid()
        datasets = {name: store.open_store(path) for name, path in self._paths.items()}
        self._check_channels(datasets)
        self._check_grids(datasets)
        self.lat = datasets[self.sources[0]]["lat"].values.astype(np.float32)
        self.lon = datasets[self.sources[0]]["lon"].values.astype(np.float32)
        years_of = _years_by_source(years, self.sources)
        self._sources = [self._describe_source(name, datasets[name], years_of[name]) for name in self.sources]
        counts = [s.init_index.size for s in self._sources]
        if sum(counts) == 0:
            selection = {name: sorted(ys) for name, ys in years_of.items()}
            raise ValueError(f"no valid init time: with max lead {max(self.lead_hours):g} h no source has "
                             f"init and target times both inside the selected years {selection}; "
                             f"select more years or shorter leads")
        self._offsets = np.cumsum([0, *counts])
        if in_memory is None:
            in_memory = self._selection_bytes() <= IN_MEMORY_LIMIT_BYTES
        self.in_memory = in_memory
        if in_memory:
            for source in self._sources:
                source.data = self._load(source, datasets[source.name])
        self.collate = functools.partial(collate, channels=self.channels, lat=self.lat, lon=self.lon,
                                         sources=self.sources)

    # ------------------------------------------------------------------ validation
    def _check_channels(self, datasets: Mapping[str, xr.Dataset]) -> None:
        available = {name: store.channel_names(ds) for name, ds in datasets.items()}
        missing = [c for c in self.channels if not any(c in chans for chans in available.values())]
        if missing:
            raise ValueError(f"channel(s) {missing} are in no store; the stores have {available}")

    def _check_grids(self, datasets: Mapping[str, xr.Dataset]) -> None:
        first = datasets[self.sources[0]]
        for ds in datasets.values():
            same = all(ds.sizes[d] == first.sizes[d] and np.allclose(ds[d].values, first[d].values, atol=1e-4)
                       for d in ("lat", "lon"))
            if not same:
                grids = {name: _describe_grid(d) for name, d in datasets.items()}
                raise ValueError(f"stores must share one lat/lon grid; regrid first. Grids: {grids}")

    def _describe_source(self, name: str, ds: xr.Dataset, years: set[int]) -> _Source:
        times = ds["time"].values.astype("datetime64[ns]")
        store_years = _store_years(times)
        outside = sorted(years - set(store_years.tolist()))
        if outside:
            raise ValueError(f"year(s) {outside} are outside store '{name}', which holds years "
                             f"{store_years.min()}-{store_years.max()}")
        step_ns = int(np.diff(times).astype(np.int64).min()) if times.size > 1 else NS_PER_HOUR
        for lead in self.lead_hours:
            if round(lead * NS_PER_HOUR) % step_ns:
                raise ValueError(f"lead {lead:g} h is not a multiple of store '{name}' time step "
                                 f"{step_ns / NS_PER_HOUR:g} h")
        selected = np.isin(store_years, list(years))
        max_steps = round(max(self.lead_hours) * NS_PER_HOUR) // step_ns
        row_of_time = np.full(times.size, -1, dtype=np.int64)
        row_of_time[selected] = np.arange(selected.sum())
        present = store.channel_names(ds)
        channel_index = np.array([i for i, c in enumerate(self.channels) if c in present], dtype=np.int64)
        stats = ds[["norm_mean", "norm_std"]].sel(channel=[self.channels[i] for i in channel_index])
        mean = np.zeros(len(self.channels), np.float32)
        std = np.ones(len(self.channels), np.float32)
        mean[channel_index] = stats["norm_mean"].values
        std[channel_index] = stats["norm_std"].values
        return _Source(name=name, channels=[self.channels[i] for i in channel_index],
                       channel_index=channel_index, mean=mean, std=std, times=times, step_ns=step_ns,
                       init_index=_valid_inits(times, selected, step_ns, max_steps), row_of_time=row_of_time)

    def _selection_bytes(self) -> int:
        cells = self.lat.size * self.lon.size
        return sum(int((s.row_of_time >= 0).sum()) * len(s.channels) * cells * 4 for s in self._sources)

    def _check_finite(self, source: _Source, values: np.ndarray, where: str) -> None:
        """values: (T, C_src, H, W) raw; raise naming the channels with NaN/Inf and their counts."""
        bad = (~np.isfinite(values)).sum(axis=(0, 2, 3))
        if bad.any():
            counts = {c: int(n) for c, n in zip(source.channels, bad) if n}
            raise ValueError(f"source '{source.name}' has NaN/Inf values {where}: counts per channel {counts}")

    def _normalize(self, source: _Source, values: np.ndarray) -> np.ndarray:
        """(T, C_src, H, W) raw -> normalized float32 with the source's own statistics."""
        index = source.channel_index
        return ((values - source.mean[index, None, None]) / source.std[index, None, None]).astype(np.float32)

    def _load(self, source: _Source, ds: xr.Dataset) -> np.ndarray:
        rows = np.flatnonzero(source.row_of_time >= 0)
        values = store.channel_array(ds, source.channels, rows)
        self._check_finite(source, values, "in the selected years")
        return self._normalize(source, values)

    # ------------------------------------------------------------------ access
    def _store(self, name: str) -> xr.Dataset:
        """A dask-free handle on a store (validated by `open_store` in the constructor), opened
        once per process: dask's thread pool does not survive the fork into DataLoader workers,
        and reads of one sample gain nothing from dask."""
        if self._opened_pid != os.getpid():
            self._opened, self._opened_pid = {}, os.getpid()
        if name not in self._opened:
            self._opened[name] = xr.open_zarr(self._paths[name], consolidated=True, chunks=None)
        return self._opened[name]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_opened": {}}

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def source_ranges(self) -> list[range]:
        """The flat indices of each source's init times, in `sources` order."""
        return [range(int(start), int(stop)) for start, stop in zip(self._offsets[:-1], self._offsets[1:])]

    def locate(self, index: int) -> tuple[int, int]:
        """Flat index -> (source index, store time index of the init time)."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} init times")
        source_index = int(np.searchsorted(self._offsets, index, side="right")) - 1
        return source_index, int(self._sources[source_index].init_index[index - self._offsets[source_index]])

    def __getitem__(self, key: tuple[int, float] | int) -> Sample:
        """`dataset[(index, lead_hours)]`; a bare index is allowed when there is a single lead."""
        if isinstance(key, tuple):
            index, lead = key
        elif len(self.lead_hours) == 1:
            index, lead = key, self.lead_hours[0]
        else:
            raise TypeError(f"index with (index, lead_hours); this dataset has leads {self.lead_hours} h")
        if float(lead) not in self.lead_hours:
            raise ValueError(f"lead {lead} h is not one of this dataset's leads {self.lead_hours} h")
        source_index, t = self.locate(int(index))
        source = self._sources[source_index]
        t_target = t + round(float(lead) * NS_PER_HOUR) // source.step_ns
        if source.data is not None:
            pair = source.data[source.row_of_time[[t, t_target]]]
        else:
            raw = store.channel_array(self._store(source.name), source.channels, [t, t_target])
            when = np.datetime_as_string(source.times[[t, t_target]], unit="m")
            self._check_finite(source, raw, f"at init {when[0]} or target {when[1]}")
            pair = self._normalize(source, raw)
        x = np.zeros((len(self.channels), self.lat.size, self.lon.size), np.float32)
        y = np.zeros_like(x)
        x[source.channel_index], y[source.channel_index] = pair[0], pair[1]
        mask = np.zeros(len(self.channels), bool)
        mask[source.channel_index] = True
        return Sample(x=x, y=y, mask=mask, mean=source.mean, std=source.std, lead_hours=float(lead),
                      source_index=source_index, time=int(source.times[t].astype(np.int64)))

    # ------------------------------------------------------------------ metadata
    def time_step_hours(self, source: str | None = None) -> float:
        """Time step of `source`, or the one step all sources share (ValueError if they differ)."""
        steps = {s.name: s.step_ns / NS_PER_HOUR for s in self._sources}
        if source is not None:
            if source not in steps:
                raise ValueError(f"unknown source {source!r}; sources are {list(steps)}")
            return steps[source]
        if len(set(steps.values())) > 1:
            raise ValueError(f"sources have different time steps {steps} h; pass a source name")
        return next(iter(steps.values()))

    def source_channels(self) -> dict[str, list[str]]:
        """Source name -> the global channels it provides."""
        return {s.name: list(s.channels) for s in self._sources}

    def init_times(self) -> np.ndarray:
        """(N,) datetime64[ns] init time of every flat index."""
        return np.concatenate([s.times[s.init_index] for s in self._sources])

    # ------------------------------------------------------------------ climatology
    def climatology(self, channels: Sequence[str], times: np.ndarray, source_index: int | np.ndarray,
                    *, normalized: bool = False) -> np.ndarray:
        """Climatology from each sample's own store: (T, C, H, W) float32, 0 where a source lacks a channel.

        times: (T,) datetime64 or int64 ns; source_index: one source index or (T,) of them.
        normalized: in the source's normalized units (for comparing with `Batch.x`/`y`).
        """
        unknown = [c for c in channels if c not in self.channels]
        if unknown:
            raise ValueError(f"channel(s) {unknown} are not among this dataset's channels {self.channels}")
        times = np.asarray(times).astype("datetime64[ns]").reshape(-1)
        source_index = np.broadcast_to(np.asarray(source_index, dtype=np.int64), times.shape)
        out = np.zeros((times.size, len(channels), self.lat.size, self.lon.size), np.float32)
        for s in np.unique(source_index):
            source = self._sources[s]
            rows = np.flatnonzero(source_index == s)
            cols = [i for i, c in enumerate(channels) if c in source.channels]
            if not cols:
                continue
            names = [channels[i] for i in cols]
            values = store.climatology(self._store(source.name), names, times[rows])
            if normalized:
                g = [self.channels.index(c) for c in names]
                values = (values - source.mean[g, None, None]) / source.std[g, None, None]
            out[np.ix_(rows, cols)] = values
        return out

    def target_climatology(self, batch: Batch) -> torch.Tensor:
        """Normalized climatology at each sample's valid time (init + lead): (B, V, H, W), for ACC."""
        valid_ns = batch.time.cpu().numpy() + np.round(batch.lead_hours.cpu().numpy().astype(np.float64)
                                                       * NS_PER_HOUR).astype(np.int64)
        clim = self.climatology(batch.channels, valid_ns, batch.source_index.cpu().numpy(), normalized=True)
        return torch.from_numpy(clim).to(batch.y.device)
