"""Normalized (coarse, fine) pairs of a downscaling store and a resumable, rank-sharded loader of them.

Everything lives in memory as float32 in the training space (`orbit.synthetic.fine_scale`): the tiny
16x32 -> 64x128 store holds ~0.1 GB per year at 12-hourly steps; the 32x64 -> 128x256 one ~1 GB
per channel-set-year at 6-hourly steps, which a cluster node holds easily.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from orbit.synthetic import fine_scale as downscale
from orbit.data.sampler import ShardedSampler


@dataclass
class DownscaleBatch:
    """coarse: (B, C, h, w) and fine: (B, C, H, W) normalized training-space fields; index: (B,)
    positions in the dataset (so evaluation can look up times)."""

    coarse: Tensor
    fine: Tensor
    index: Tensor

    def __len__(self) -> int:
        return self.coarse.shape[0]


class DownscaleDataset:
    """The time steps of ``years`` (inclusive) of a downscaling store, normalized with its training
    statistics. ``fraction`` < 1 keeps only the first ``ceil(fraction * T)`` steps (less training data).
    """

    def __init__(self, path: str | Path, channels: Sequence[str], years: Sequence[int], fraction: float = 1.0):
        ds = downscale.open_pairs(path)
        unknown = [c for c in channels if c not in downscale.CHANNELS]
        if not channels or unknown:
            raise ValueError(f"channels {list(channels)} must be a non-empty subset of the downscaling channels "
                             f"{list(downscale.CHANNELS)} (unknown: {unknown})")
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        year = ds["time"].dt.year
        ds = ds.sel(time=(year >= years[0]) & (year <= years[1]))
        steps = ds.sizes["time"]
        if steps == 0:
            raise ValueError(f"years {list(years)} hold no time steps in {path} (it covers "
                             f"{int(year.min())}-{int(year.max())})")
        ds = ds.isel(time=slice(0, math.ceil(fraction * steps)))
        self.channels = tuple(channels)
        stats = ds[["norm_mean", "norm_std"]].sel(channel=list(channels)).load()
        self.mean = stats["norm_mean"].values.astype(np.float32)  # (C,)
        self.std = stats["norm_std"].values.astype(np.float32)
        self.coarse = self._normalized(ds, "_coarse")  # (T, C, h, w)
        self.fine = self._normalized(ds, "")  # (T, C, H, W)
        self.statics = np.stack([_standardized(ds[name].values) for name in downscale.STATICS])  # (S, H, W)
        self.times = ds["time"].values
        self.lat, self.lon = ds["lat"].values.copy(), ds["lon"].values.copy()
        self.lat_coarse, self.lon_coarse = ds["lat_coarse"].values, ds["lon_coarse"].values
        self.scale = int(ds.attrs["scale"])
        self.attrs = {name: dict(ds[name].attrs) for name in channels}

    def _normalized(self, ds, suffix: str) -> np.ndarray:
        fields = [downscale.to_training_space(c, ds[c + suffix].values.astype(np.float32)) for c in self.channels]
        return ((np.stack(fields, axis=1) - self.mean[:, None, None]) / self.std[:, None, None]).astype(np.float32)

    def __len__(self) -> int:
        return len(self.times)

    def batch(self, indices: Sequence[int]) -> DownscaleBatch:
        index = np.asarray(indices, dtype=np.int64)
        return DownscaleBatch(torch.from_numpy(self.coarse[index]), torch.from_numpy(self.fine[index]),
                              torch.from_numpy(index))

    def to_physical(self, fields: Tensor) -> Tensor:
        """Normalized training-space fields (B, C, H, W) -> physical units (precipitation >= 0)."""
        mean, std = torch.as_tensor(self.mean).to(fields), torch.as_tensor(self.std).to(fields)
        values = fields * std[:, None, None] + mean[:, None, None]
        return torch.stack([downscale.to_physical(c, values[:, j]) for j, c in enumerate(self.channels)], dim=1)


def _standardized(values: np.ndarray) -> np.ndarray:
    """A static field scaled to zero mean, unit std over the grid (a constant field becomes 0)."""
    values = values.astype(np.float64)
    return ((values - values.mean()) / max(values.std(), 1e-8)).astype(np.float32)


class DownscaleLoader:
    """Endless training batches of one data rank, resumable from `state_dict()`.

    The order and state format are `orbit.data.sampler.ShardedSampler`'s (drop_last), so it has the
    same parity and resume guarantees as the forecasting loader.
    """

    def __init__(self, dataset: DownscaleDataset, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.dataset = dataset
        self.sampler = ShardedSampler(len(dataset), batch_size, seed=seed, rank=rank, world_size=world_size)

    @property
    def batches_per_epoch(self) -> int:
        return self.sampler.batches_per_epoch

    def __iter__(self) -> Iterator[DownscaleBatch]:
        return (self.dataset.batch(indices) for indices in self.sampler)

    def state_dict(self) -> dict[str, int]:
        """The sampler's state (format: `orbit.data.sampler`)."""
        return self.sampler.state_dict()

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.sampler.load_state_dict(state)
