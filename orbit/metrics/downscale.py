"""Downscaling metrics, per channel, over a whole evaluation set (ORBIT-2's table columns).

Layouts: `pred`, `truth`: (N, C, H, W) in physical units (N samples, C channels); `lat`: (H,)
degrees. w_h = `orbit.metrics.latitude_weights` (area weights, mean 1) weigh every pixel of row h,
and sums run over samples and pixels:

- RMSE_c      = sqrt( sum w e^2 / sum w ),  e = pred - truth
- RMSE_c(q)   = the same over the pixels whose truth is at or above the q-th percentile of
                channel c's truth values (all samples and pixels, linear interpolation): the error on
                the extremes (ORBIT-2 reports q = 68, 95, 99.7, 99.99, i.e. beyond 1, 2, 3, 4 sigma).
- Pearson_c   = cov_w(pred, truth) / sqrt(var_w(pred) var_w(truth)), weighted moments.
- SSIM_c      = mean over samples of the mean SSIM map (Wang et al. 2004): Gaussian window
                (11 cells, sigma 1.5) statistics, valid part of the map only,
                SSIM = (2 mu_x mu_y + c1)(2 s_xy + c2) / ((mu_x^2 + mu_y^2 + c1)(s_x^2 + s_y^2 + c2)),
                c1 = (0.01 L)^2, c2 = (0.03 L)^2, L = max - min of channel c's truth.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from orbit.metrics.weather import latitude_weights

PERCENTILES = (68.0, 95.0, 99.7, 99.99)


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
    """(P, C) float64: the q-th percentile of each channel's truth over all samples and pixels."""
    values = truth.detach().double().transpose(0, 1).reshape(truth.shape[1], -1).cpu().numpy()
    return torch.from_numpy(np.percentile(values, list(percentiles), axis=1))


def rmse_above(pred: Tensor, truth: Tensor, lat: Tensor, percentiles: Sequence[float] = PERCENTILES) -> Tensor:
    """(P, C) area-weighted RMSE over the pixels whose truth is >= the channel's q-th percentile."""
    _check(pred, truth, lat)
    w = _pixel_weights(truth, lat)
    sq_error = w * (pred.double() - truth.double()) ** 2
    thresholds = percentile_thresholds(truth, percentiles).to(truth.device)
    rows = []
    for threshold in thresholds:
        selected = truth.double() >= threshold[None, :, None, None]
        rows.append((_channel_sum(sq_error * selected) / _channel_sum(w * selected)).sqrt())
    return torch.stack(rows)


def pearson(pred: Tensor, truth: Tensor, lat: Tensor) -> Tensor:
    """Area-weighted Pearson correlation per channel -> (C,) float64."""
    _check(pred, truth, lat)
    w = _pixel_weights(truth, lat)
    total = _channel_sum(w)
    x, y = pred.double(), truth.double()
    x = x - (_channel_sum(w * x) / total)[None, :, None, None]
    y = y - (_channel_sum(w * y) / total)[None, :, None, None]
    return _channel_sum(w * x * y) / (_channel_sum(w * x * x) * _channel_sum(w * y * y)).sqrt()


def gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    """(size,) normalized 1-D Gaussian, float64."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_per_sample(pred: Tensor, truth: Tensor, data_range: Tensor, window: int = 11,
                    sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> Tensor:
    """Mean SSIM of each (sample, channel) map -> (N, C) float64. data_range: (C,) L per channel."""
    _check(pred, truth)
    n, c, h, w = truth.shape
    if min(h, w) < window:
        raise ValueError(f"SSIM needs maps of at least {window}x{window} cells, got {h}x{w}")
    g = gaussian_window(window, sigma).to(truth.device)
    kernel_rows = g.view(1, 1, window, 1).expand(c, 1, window, 1)
    kernel_cols = g.view(1, 1, 1, window).expand(c, 1, 1, window)

    def local_mean(x: Tensor) -> Tensor:  # separable Gaussian filter, valid part only
        return F.conv2d(F.conv2d(x, kernel_rows, groups=c), kernel_cols, groups=c)

    x, y = pred.double(), truth.double()
    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mu_x**2
    var_y = local_mean(y * y) - mu_y**2
    cov = local_mean(x * y) - mu_x * mu_y
    L = data_range.double().to(truth.device)[None, :, None, None]
    c1, c2 = (k1 * L) ** 2, (k2 * L) ** 2
    ssim_map = (2 * mu_x * mu_y + c1) * (2 * cov + c2) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(-2, -1))


def ssim(pred: Tensor, truth: Tensor) -> Tensor:
    """(C,) SSIM per channel, averaged over samples; L = the channel's truth range over the set."""
    flat = truth.detach().double().transpose(0, 1).reshape(truth.shape[1], -1)
    data_range = (flat.max(dim=1).values - flat.min(dim=1).values).clamp_min(1e-12)
    return ssim_per_sample(pred, truth, data_range).mean(dim=0)


def downscaling_scores(pred: Tensor, truth: Tensor, lat: Tensor, channels: Sequence[str],
                       percentiles: Sequence[float] = PERCENTILES) -> dict[str, dict[str, float]]:
    """{channel: {"rmse", "pearson", "ssim", "rmse_p<q>" for each q}} as floats."""
    _check(pred, truth, lat)
    if len(channels) != truth.shape[1]:
        raise ValueError(f"got {len(channels)} channel names {list(channels)} for {truth.shape[1]} channels")
    columns = {"rmse": rmse(pred, truth, lat), "pearson": pearson(pred, truth, lat), "ssim": ssim(pred, truth)}
    above = rmse_above(pred, truth, lat, percentiles)
    columns.update({f"rmse_p{q:g}": row for q, row in zip(percentiles, above)})
    return {channel: {name: float(values[j]) for name, values in columns.items()}
            for j, channel in enumerate(channels)}
