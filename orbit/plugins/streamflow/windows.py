"""Samples of a streamflow run: forecast windows cut from a `BasinSet`, normalised with statistics of
the training basins and period only, and served as resumable, rank-sharded batches.

A sample is (basin b, issue day t0). Its inputs are the drivers of the `seq_len` days up to t0
(`x_past`), the observed flow of those days (`q_past`, zero-filled where missing), the drivers of
the `horizon` days after t0 as a forecaster would have them (`x_future`: observed drivers plus an
error that grows with lead, see `forecast_noise`) and the basin's static attributes; its target is
the flow of days t0+1 .. t0+horizon. With `horizon: 1` and no past flow this is NeuralHydrology's
simulation setting (flow of a day from the drivers up to that day).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from orbit.data.sampler import SampledBatches

from .basins import BasinSet

NOISE_TABLE = 1 << 20  # pseudo-random normals indexed by (sample, lead): deterministic, no per-sample RNG


@dataclass
class StreamflowBatch:
    """x_past (B, T, D), x_future (B, H, D), q_past (B, T, 1), static (B, S): normalised inputs;
    y (B, H): normalised target flow (NaN = missing); basin_std (B, 1): the basin's training-period
    flow std in normalised units (NSE* weight); basin (B,), t0 (B,) int64: where the sample is."""

    x_past: torch.Tensor
    x_future: torch.Tensor
    q_past: torch.Tensor
    static: torch.Tensor
    y: torch.Tensor
    basin_std: torch.Tensor
    basin: torch.Tensor
    t0: torch.Tensor

    def inputs(self) -> tuple[torch.Tensor, ...]:
        return self.x_past, self.x_future, self.q_past, self.static


def _std(a: np.ndarray, axis) -> np.ndarray:
    std = np.nanstd(a, axis=axis)
    return np.where(std > 0, std, 1.0)


class Windows:
    """Normalised arrays of a BasinSet and the sample index of each split.

    `train_basins`: rows whose training-period days give every normalisation statistic (drivers per
    variable, static per attribute, flow as one global mean/std; the NSE* weight is each basin's
    own flow std over the training period)."""

    def __init__(self, data: BasinSet, seq_len: int, horizon: int, past_flow: bool, forecast_error: float,
                 train_basins: np.ndarray, train_days: slice, seed: int):
        self.data, self.seq_len, self.horizon = data, seq_len, horizon
        self.past_flow, self.forecast_error = past_flow, forecast_error
        x_train = data.drivers[train_basins, train_days]
        self.x_mean, self.x_std = x_train.mean((0, 1)), _std(x_train, (0, 1))
        self.s_mean, self.s_std = data.static[train_basins].mean(0), _std(data.static[train_basins], 0)
        q_train = data.flow[train_basins, train_days]
        self.q_mean, self.q_std = float(np.nanmean(q_train)), float(_std(q_train, None))
        self.x = ((data.drivers - self.x_mean) / self.x_std).astype(np.float32)
        self.s = ((data.static - self.s_mean) / self.s_std).astype(np.float32)
        self.q = ((data.flow - self.q_mean) / self.q_std).astype(np.float32)
        with np.errstate(all="ignore"):
            self.basin_std = _std(self.q[:, train_days], 1).astype(np.float32)
        self.noise = np.random.default_rng([seed, 29]).normal(size=(NOISE_TABLE, self.x.shape[2])).astype(np.float32)

    def samples(self, basins: np.ndarray, first: int, last: int, require_target: bool) -> tuple[np.ndarray, np.ndarray]:
        """(basin rows, t0) of every sample whose targets t0+1..t0+H lie in days [first, last];
        `require_target`: only samples whose targets are all observed (training)."""
        t0 = np.arange(first - 1, last - self.horizon + 1)
        b, t = np.repeat(basins, len(t0)), np.tile(t0, len(basins))
        if require_target:
            lead_days = t[:, None] + np.arange(1, self.horizon + 1)
            keep = np.isfinite(self.q[b[:, None], lead_days]).all(1)
            b, t = b[keep], t[keep]
        return b.astype(np.int64), t.astype(np.int64)

    def forecast_noise(self, b: np.ndarray, t0: np.ndarray) -> np.ndarray:
        """(B, H, D) error of the driver forecasts, in normalised units: a fixed pseudo-random normal per
        (basin, issue day, lead, driver) times ``forecast_error * sqrt(lead)``, capped at 1 (the spread
        of the drivers themselves: a forecast no better than climatology noise)."""
        lead = np.arange(1, self.horizon + 1)
        key = ((b[:, None].astype(np.int64) * len(self.data.dates) + t0[:, None]) * self.horizon + lead - 1)
        scale = np.minimum(self.forecast_error * np.sqrt(lead), 1.0)[None, :, None]
        return self.noise[key % NOISE_TABLE] * scale.astype(np.float32)

    def batch(self, b: np.ndarray, t0: np.ndarray) -> StreamflowBatch:
        past = t0[:, None] + np.arange(-self.seq_len + 1, 1)
        future = t0[:, None] + np.arange(1, self.horizon + 1)
        x_future = self.x[b[:, None], future]
        if self.forecast_error > 0:
            x_future = x_future + self.forecast_noise(b, t0)
        q_past = self.q[b[:, None], past][..., None]
        q_past = np.nan_to_num(q_past) if self.past_flow else np.zeros_like(q_past)
        return StreamflowBatch(
            torch.from_numpy(self.x[b[:, None], past]), torch.from_numpy(np.ascontiguousarray(x_future)),
            torch.from_numpy(q_past), torch.from_numpy(self.s[b]), torch.from_numpy(self.q[b[:, None], future]),
            torch.from_numpy(self.basin_std[b][:, None]), torch.from_numpy(b), torch.from_numpy(t0))

    def physical(self, qn: np.ndarray) -> np.ndarray:
        """Normalised flow back to mm/day."""
        return qn * self.q_std + self.q_mean


class WindowBatches(SampledBatches):
    """Batches of the samples (b, t0) for one data rank (basins and days shuffled together by
    `ShardedSampler`, so ranks' batches concatenate to the one-process batch)."""

    def __init__(self, windows: Windows, b: np.ndarray, t0: np.ndarray, batch_size: int, seed: int, rank: int,
                 world_size: int):
        super().__init__(len(b), batch_size, seed, rank, world_size)
        self.windows, self.b, self.t0 = windows, b, t0

    def batch(self, positions: np.ndarray) -> StreamflowBatch:
        return self.windows.batch(self.b[positions], self.t0[positions])
