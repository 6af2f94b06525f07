"""Typed forecast samples and batches, and the collate function between them.

A `Sample` is what `ForecastDataset` returns for one (init time, lead) pair, in numpy; a `Batch`
is the stacked torch form every model, loss and metric consumes. Channels follow one GLOBAL
order shared by all sources: a channel a source lacks is zero in `x`/`y` and False in `mask`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class Sample:
    """One normalized forecast pair. x, y: (V, H, W) float32; mask, mean, std: (V,)."""

    x: np.ndarray
    y: np.ndarray
    mask: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    lead_hours: float
    source_index: int
    time: int  # init time, ns since 1970-01-01


@dataclass
class Batch:
    """A batch of forecast pairs on one grid.

    x: (B, V, H, W) normalized inputs at init time t; y: (B, V, H, W) normalized targets at
    t + lead; mask: (B, V) bool, channel present in the sample's source; lead_hours: (B,) float32;
    channels: the V global channel names; source_index: (B,) long, index into `sources`;
    time: (B,) int64 init time in ns since the epoch; mean, std: (B, V) the sample's source
    normalization (0 / 1 where absent), so `x * std + mean` is physical; lat: (H,) degrees north
    ascending; lon: (W,) degrees east; sources: source names in `source_index` order.
    """

    x: Tensor
    y: Tensor
    mask: Tensor
    lead_hours: Tensor
    channels: tuple[str, ...]
    source_index: Tensor
    time: Tensor
    mean: Tensor
    std: Tensor
    lat: Tensor
    lon: Tensor
    sources: tuple[str, ...] = ()

    def __len__(self) -> int:
        return self.x.shape[0]

    def _map_tensors(self, fn) -> "Batch":
        return dataclasses.replace(self, **{
            f.name: fn(getattr(self, f.name)) for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        })

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        """A copy with every tensor on `device`."""
        return self._map_tensors(lambda t: t.to(device, non_blocking=non_blocking))

    def select(self, rows: Tensor) -> "Batch":
        """The samples `rows` (pipeline microbatches); lat and lon are shared by every sample."""
        shared = {"lat", "lon"}
        return dataclasses.replace(self, **{
            f.name: getattr(self, f.name).index_select(0, rows.to(getattr(self, f.name).device))
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), Tensor) and f.name not in shared
        })

    def pin_memory(self) -> "Batch":
        """A copy in page-locked memory (called by DataLoader(pin_memory=True))."""
        return self._map_tensors(lambda t: t.pin_memory())

    def denormalize(self, field: Tensor) -> Tensor:
        """Physical units of a normalized field: (B, V, H, W) * std + mean, per sample and channel."""
        return field * self.std[..., None, None] + self.mean[..., None, None]


def collate(samples: Sequence[Sample], *, channels: Sequence[str], lat: np.ndarray, lon: np.ndarray,
            sources: Sequence[str] = ()) -> Batch:
    """Stack samples into a Batch; the grid and channel names are shared, passed once.

    Used as `functools.partial(collate, channels=..., lat=..., lon=..., sources=...)` so it
    pickles into DataLoader worker processes.
    """
    if not samples:
        raise ValueError("cannot collate an empty list of samples")

    def stack(name: str, dtype: torch.dtype) -> Tensor:
        return torch.from_numpy(np.stack([getattr(s, name) for s in samples])).to(dtype)

    return Batch(
        x=stack("x", torch.float32),
        y=stack("y", torch.float32),
        mask=stack("mask", torch.bool),
        lead_hours=torch.tensor([s.lead_hours for s in samples], dtype=torch.float32),
        channels=tuple(channels),
        source_index=torch.tensor([s.source_index for s in samples], dtype=torch.long),
        time=torch.tensor([s.time for s in samples], dtype=torch.int64),
        mean=stack("mean", torch.float32),
        std=stack("std", torch.float32),
        lat=torch.as_tensor(np.asarray(lat, dtype=np.float32)),
        lon=torch.as_tensor(np.asarray(lon, dtype=np.float32)),
        sources=tuple(sources),
    )
