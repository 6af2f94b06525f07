"""Normalization statistics and climatology of a store, accumulated one time block at a time.

A store may be far larger than memory, so nothing here ever holds more than one block:

- mean and std per channel over (time, lat, lon) merge block results with Chan et al.'s parallel
  update (count, mean, sum of squared deviations), which stays exact where a running sum of
  squares would cancel (geopotential: mean 5e4, std 5e2);
- the climatology is the least-squares fit of :func:`orbit.data.store.design_matrix` per
  (channel, lat, lon). Its normal equations ``X^T X`` (15 x 15) and ``X^T Y`` (15 x C x H x W,
  float64: 0.36 GB for 91 channels at 128x256) are sums over time steps, so they accumulate block
  by block; the coefficients are ``pinv(X^T X) X^T Y``, the minimum-norm solution that ``lstsq``
  would give (6-hourly sampling cannot see the second diurnal sine; its coefficient is 0).

The accumulated state is a dict of arrays (:meth:`state_dict`), saved beside a partly written
store so that an interrupted write resumes without a second pass over the data.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr

from orbit.data.store import HARMONICS, STD_FLOOR, design_matrix

PINV_RCOND = 1e-10  # eigenvalues of X^T X below this fraction of the largest count as zero


class StreamingStatistics:
    """Training-years mean, std and climatology coefficients of ``channels`` on an (H, W) grid."""

    def __init__(self, channels: Sequence[str], shape: tuple[int, int]):
        self.channels = list(channels)
        self.shape = tuple(shape)
        n_channels, cells = len(self.channels), int(np.prod(shape))
        self.count = np.zeros((), np.int64)  # time steps seen (every channel has all of them)
        self.mean = np.zeros(n_channels)
        self.m2 = np.zeros(n_channels)
        self.xtx = np.zeros((len(HARMONICS), len(HARMONICS)))
        self.xty = np.zeros((len(HARMONICS), n_channels, cells))

    def update(self, times: np.ndarray, values: np.ndarray, channel: int) -> None:
        """Add ``values: (T, H, W)`` of one channel at ``times`` (call once per channel per block,
        then :meth:`advance`)."""
        flat = np.asarray(values, np.float64).reshape(len(times), -1)
        n_old, n_new = int(self.count) * flat.shape[1], flat.size
        block_mean = flat.mean()
        block_m2 = float(((flat - block_mean) ** 2).sum())
        delta = block_mean - self.mean[channel]
        total = n_old + n_new
        self.mean[channel] += delta * n_new / total
        self.m2[channel] += block_m2 + delta**2 * n_old * n_new / total
        self.xty[:, channel] += design_matrix(times).T @ flat

    def advance(self, times: np.ndarray) -> None:
        """Close a block of ``times`` once every channel has been added."""
        basis = design_matrix(times)
        self.xtx += basis.T @ basis
        self.count += len(times)

    def result(self) -> xr.Dataset:
        """norm_mean, norm_std ``(channel,)`` and clim_coef ``(channel, harmonic, lat, lon)``, float32."""
        if self.count < len(HARMONICS):
            raise ValueError(f"the statistics saw {int(self.count)} time steps; the climatology fit needs at "
                             f"least {len(HARMONICS)}")
        cells = int(np.prod(self.shape))
        std = np.maximum(np.sqrt(self.m2 / (int(self.count) * cells)), STD_FLOOR)
        coef = np.einsum("kj,jcn->ckn", np.linalg.pinv(self.xtx, rcond=PINV_RCOND, hermitian=True), self.xty)
        return xr.Dataset(
            {
                "norm_mean": ("channel", self.mean.astype(np.float32), {"long_name": "training-years mean"}),
                "norm_std": ("channel", std.astype(np.float32), {"long_name": "training-years std"}),
                "clim_coef": (("channel", "harmonic", "lat", "lon"),
                              coef.reshape(len(self.channels), len(HARMONICS), *self.shape).astype(np.float32),
                              {"long_name": "least-squares climatology coefficients on the harmonic basis"}),
            },
            coords={"channel": self.channels, "harmonic": list(HARMONICS)},
        )

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2, "xtx": self.xtx, "xty": self.xty}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        for name, value in self.state_dict().items():
            if np.shape(state[name]) != value.shape:
                raise ValueError(f"saved statistics '{name}' have shape {np.shape(state[name])}, expected {value.shape}")
            setattr(self, name, np.array(state[name], dtype=value.dtype))
