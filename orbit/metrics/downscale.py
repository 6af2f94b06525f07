"""Downscaling metrics, per channel, over a set of samples (ORBIT-2's table columns).

Layouts: `pred`, `truth`: (N, C, H, W) in physical units (N samples, C channels); `lat`: (H,)
degrees. w_h = `orbit.metrics.latitude_weights` (area weights, mean 1) weigh every pixel of row h.

- RMSE_c      = sqrt( sum_{n,h,w} w e^2 / sum w ),  e = pred - truth.
- RMSE_c(q)   = the same over the (sample, pixel) pairs whose truth is at or above t_q(c, h, w), the q-th
                percentile of the truth at that grid point over the N samples (linear interpolation):
                the error on the extremes of each place, not on the warmest places (ORBIT-2 reports
                q = 68, 95, 99.7, 99.99, i.e. beyond 1, 2, 3, 4 sigma). With N samples a q above
                100 (1 - 1/N) keeps about one sample per point (its maximum): 128 samples resolve q <= 99.2.
- Pearson_c   = mean over samples n of r_nc = cov_w(pred_nc, truth_nc) / sqrt(var_w(pred_nc) var_w(truth_nc)),
                area-weighted moments over the map of one sample: how well the spatial pattern is placed
                (pooling all samples would mostly score the large-scale and seasonal signal, ~1 for any method).
- SSIM_c      = mean over samples of `skimage.metrics.structural_similarity` of each (sample, channel) map
                (Wang et al. 2004: Gaussian window sigma 1.5, 11 cells, population covariances, K1 = 0.01,
                K2 = 0.03, mean over the map less a 5-cell border), with the fixed data range L_c of
                `DATA_RANGE` (so a score does not depend on the evaluation set's extremes). SSIM is computed on
                the lat-lon grid, unweighted.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from skimage.metrics import structural_similarity
from torch import Tensor

from orbit.metrics.weather import latitude_weights

PERCENTILES = (68.0, 95.0, 99.7, 99.99)
# L_c of SSIM, in the channel's physical units: the span of the toy Earth's values (t2m 225-305 K, 10-m
# winds -20..20 m s-1, 6-hourly precipitation 0-35 mm, z500 48000-59000 m2 s-2), fixed for every set.
DATA_RANGE = {"t2m": 80.0, "u10": 40.0, "v10": 40.0, "tp": 35.0, "z500": 11000.0}
SSIM_SIGMA = 1.5


def _check(pred: Tensor, truth: Tensor, lat: Tensor | None = None) -> None:
    if pred.ndim != 4 or pred.shape != truth.shape:
        raise ValueError(f"pred and truth must share one (N, C, H, W) shape, got {tuple(pred.shape)} and "
                         f"{tuple(truth.shape)}")
    if lat is not None and lat.shape != (truth.shape[2],):
        raise ValueError(f"lat must have shape (H,) = ({truth.shape[2]},), got {tuple(lat.shape)}")


def _pixel_weights(truth: Tensor, lat: Tensor) -> Tensor:
    """(H,) area weights broadcast to (N, C, H, W), float64."""
    return latitude_weights(lat.double())[:, None].expand_as(truth)


def _channel_sum(x: Tensor) -> Tensor:
    """(N, C, H, W) -> (C,)."""
    return x.sum(dim=(0, 2, 3))


def rmse(pred: Tensor, truth: Tensor, lat: Tensor) -> Tensor:
    """Area-weighted RMSE per channel -> (C,) float64."""
    _check(pred, truth, lat)
    w = _pixel_weights(truth, lat)
    return (_channel_sum(w * (pred.double() - truth.double()) ** 2) / _channel_sum(w)).sqrt()


def percentile_thresholds(truth: Tensor, percentiles: Sequence[float] = PERCENTILES) -> Tensor:
    """(P, C, H, W) float64: the q-th percentile of the truth at each grid point over the N samples."""
    values = truth.detach().double().cpu().numpy()
    return torch.from_numpy(np.percentile(values, list(percentiles), axis=0))


def rmse_above(pred: Tensor, truth: Tensor, lat: Tensor, percentiles: Sequence[float] = PERCENTILES) -> Tensor:
    """(P, C) area-weighted RMSE over the (sample, pixel) pairs whose truth is >= that point's q-th percentile."""
    _check(pred, truth, lat)
    w = _pixel_weights(truth, lat)
    sq_error = w * (pred.double() - truth.double()) ** 2
    thresholds = percentile_thresholds(truth, percentiles).to(truth.device)
    rows = []
    for threshold in thresholds:
        selected = truth.double() >= threshold[None]
        rows.append((_channel_sum(sq_error * selected) / _channel_sum(w * selected)).sqrt())
    return torch.stack(rows)


def pearson_per_sample(pred: Tensor, truth: Tensor, lat: Tensor) -> Tensor:
    """Area-weighted Pearson correlation over the map of each sample -> (N, C) float64."""
    _check(pred, truth, lat)
    w = latitude_weights(lat.double())[:, None]  # (H, 1)
    x, y = pred.double(), truth.double()

    def centred(a: Tensor) -> Tensor:
        return a - (w * a).sum(dim=(-2, -1), keepdim=True) / (w.sum() * a.shape[-1])

    x, y = centred(x), centred(y)
    return (w * x * y).sum(dim=(-2, -1)) / ((w * x * x).sum(dim=(-2, -1)) * (w * y * y).sum(dim=(-2, -1))).sqrt()


def pearson(pred: Tensor, truth: Tensor, lat: Tensor) -> Tensor:
    """(C,) mean over samples of the per-sample spatial Pearson correlation."""
    return pearson_per_sample(pred, truth, lat).mean(dim=0)


def ssim_per_sample(pred: Tensor, truth: Tensor, data_range: Sequence[float]) -> Tensor:
    """SSIM of each (sample, channel) map with scikit-image -> (N, C) float64; data_range: (C,) L per channel."""
    _check(pred, truth)
    if len(data_range) != truth.shape[1] or min(data_range) <= 0:
        raise ValueError(f"need one positive data range per channel ({truth.shape[1]}), got {list(data_range)}")
    x, y = pred.detach().double().cpu().numpy(), truth.detach().double().cpu().numpy()
    out = np.empty(x.shape[:2])
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            out[n, c] = structural_similarity(y[n, c], x[n, c], data_range=float(data_range[c]),
                                              gaussian_weights=True, sigma=SSIM_SIGMA, use_sample_covariance=False)
    return torch.from_numpy(out)


def data_ranges(channels: Sequence[str], data_range: Mapping[str, float] = DATA_RANGE) -> list[float]:
    """L_c for each channel from `data_range`; an error names the channels without one."""
    missing = [c for c in channels if c not in data_range]
    if missing:
        raise ValueError(f"no SSIM data range for channels {missing}; known: {dict(data_range)}")
    return [float(data_range[c]) for c in channels]


def ssim(pred: Tensor, truth: Tensor, channels: Sequence[str], data_range: Mapping[str, float] = DATA_RANGE) -> Tensor:
    """(C,) SSIM per channel, averaged over samples, with the fixed L_c of `data_range`."""
    return ssim_per_sample(pred, truth, data_ranges(channels, data_range)).mean(dim=0)


def downscaling_scores(pred: Tensor, truth: Tensor, lat: Tensor, channels: Sequence[str],
                       percentiles: Sequence[float] = PERCENTILES,
                       data_range: Mapping[str, float] = DATA_RANGE) -> dict[str, dict[str, float]]:
    """{channel: {"rmse", "pearson", "ssim", "rmse_p<q>" for each q}} as floats."""
    _check(pred, truth, lat)
    if len(channels) != truth.shape[1]:
        raise ValueError(f"got {len(channels)} channel names {list(channels)} for {truth.shape[1]} channels")
    columns = {"rmse": rmse(pred, truth, lat), "pearson": pearson(pred, truth, lat),
               "ssim": ssim(pred, truth, channels, data_range)}
    above = rmse_above(pred, truth, lat, percentiles)
    columns.update({f"rmse_p{q:g}": row for q, row in zip(percentiles, above)})
    return {channel: {name: float(values[j]) for name, values in columns.items()}
            for j, channel in enumerate(channels)}
