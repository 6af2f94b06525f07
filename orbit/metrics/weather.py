"""Forecast skill metrics with WeatherBench2 (WB2) conventions — the one metrics module.

Layouts: fields are `(B, V, H, W)` (B samples / init times, V channels, H latitudes, W longitudes),
`lat: (H,)` in degrees, `mask: (B, V)` bool (channel present in that sample's source).

Notation: w_h = latitude weight of row h (mean 1), <f> = (1 / (H W)) * sum_{h,w} w_h f_{h,w}
is the area-weighted spatial mean of one sample's channel.

- MSE_{b,v}  = < (pred - target)^2 >                                  (per sample and channel)
- RMSE_v     = sqrt( mean_b MSE_{b,v} )       WB2 `RMSE`: the square root is taken AFTER the
                                               time (sample) mean, not per sample.
- ACC_{b,v}  = < a' o' > / sqrt( < a'^2 > < o'^2 > ),  a' = pred - clim,  o' = target - clim
               WB2 `ACC`: anomalies against a climatology, NOT re-centred by their spatial mean,
               computed per init time and then averaged over time: ACC_v = mean_b ACC_{b,v}.

Samples whose channel is absent (mask False) are left out of every mean.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def latitude_weights(lat: Tensor) -> Tensor:
    """Area weights of latitude rows, normalised to mean 1: w_h = cos(lat_h) / mean_h cos(lat_h).

    WB2 weights rows by their cell area, the difference of sin(lat) over the cell edges. On a
    regular cell-centred grid (our stores: centres, no pole rows) that difference is
    2 sin(dlat/2) cos(lat_h), i.e. proportional to cos(lat_h), so cos of the centres is exact
    up to the constant removed by the normalisation.

    lat: (H,) degrees north -> (H,) float weights with mean 1.
    """
    if lat.ndim != 1:
        raise ValueError(f"lat must be 1-D (H,) in degrees, got shape {tuple(lat.shape)}")
    weights = torch.cos(torch.deg2rad(lat.to(torch.float64))).clamp_min(0.0)
    return (weights / weights.mean()).to(lat.dtype if lat.is_floating_point() else torch.float32)


def _check_fields(lat: Tensor, *fields: Tensor) -> None:
    shape = fields[0].shape
    for field in fields:
        if field.ndim != 4 or field.shape != shape:
            raise ValueError(f"fields must share one (B, V, H, W) shape, got {[tuple(f.shape) for f in fields]}")
    if lat.shape != (shape[2],):
        raise ValueError(f"lat must have shape (H,) = ({shape[2]},), got {tuple(lat.shape)}")


def _spatial_mean(field: Tensor, weights: Tensor) -> Tensor:
    """<f>: area-weighted mean over (H, W). field: (B, V, H, W), weights: (H,) -> (B, V)."""
    return (field * weights[:, None]).mean(dim=(-2, -1))


def _masked_sample_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over dim 0 of (B, V) values, counting only present entries -> (V,); NaN if none."""
    if mask is None:
        return values.mean(dim=0)
    mask = mask.to(values.device)
    total = torch.where(mask, values, torch.zeros_like(values)).sum(dim=0)
    return total / mask.sum(dim=0)


def weighted_mse(pred: Tensor, target: Tensor, lat: Tensor, mask: Tensor | None = None) -> Tensor:
    """MSE_{b,v} = <(pred - target)^2>, the latitude-weighted spatial MSE.

    pred, target: (B, V, H, W); lat: (H,); mask: (B, V) bool or None.
    Returns (B, V); entries of absent channels are 0.
    """
    _check_fields(lat, pred, target)
    mse = _spatial_mean((pred - target) ** 2, latitude_weights(lat).to(pred))
    if mask is not None:
        mse = torch.where(mask.to(mse.device), mse, torch.zeros_like(mse))
    return mse


def lat_weighted_mse_loss(pred: Tensor, target: Tensor, lat: Tensor, mask: Tensor | None = None) -> Tensor:
    """Training loss: per sample, the mean of MSE_{b,v} over its present channels; then the mean
    over samples -> scalar.

    Every sample weighs the same whatever its source's channel count, so the mean of equal-sized
    local batches (data-parallel ranks, pipeline microbatches) equals the global batch's loss
    exactly. pred, target: (B, V, H, W); mask: (B, V) bool or None. A sample with no channel
    present contributes 0 (no host sync to check it on the training path).
    """
    mse = weighted_mse(pred, target, lat, mask)
    if mask is None:
        return mse.mean()
    per_sample = mse.sum(dim=1) / mask.to(mse.device).sum(dim=1).clamp_min(1)
    return per_sample.mean()


def rmse(pred: Tensor, target: Tensor, lat: Tensor, mask: Tensor | None = None) -> Tensor:
    """RMSE_v = sqrt(mean_b MSE_{b,v}) (WB2: square root after the time mean).

    pred, target: (B, V, H, W) with B the init times; mask: (B, V) or None -> (V,).
    """
    return _masked_sample_mean(weighted_mse(pred, target, lat, mask), mask).sqrt()


def acc_per_sample(pred: Tensor, target: Tensor, clim: Tensor, lat: Tensor) -> Tensor:
    """ACC_{b,v} = <a' o'> / sqrt(<a'^2> <o'^2>) with a' = pred - clim, o' = target - clim.

    pred, target, clim: (B, V, H, W) -> (B, V). NaN where an anomaly is identically zero.
    """
    _check_fields(lat, pred, target, clim)
    weights = latitude_weights(lat).to(pred)
    forecast_anomaly, observed_anomaly = pred - clim, target - clim
    covariance = _spatial_mean(forecast_anomaly * observed_anomaly, weights)
    variance = _spatial_mean(forecast_anomaly**2, weights) * _spatial_mean(observed_anomaly**2, weights)
    return covariance / variance.sqrt()


def acc(pred: Tensor, target: Tensor, clim: Tensor, lat: Tensor, mask: Tensor | None = None) -> Tensor:
    """ACC_v = mean_b ACC_{b,v} (WB2: per init time, then averaged over time) -> (V,)."""
    return _masked_sample_mean(acc_per_sample(pred, target, clim, lat), mask)


class SkillAccumulator:
    """Sums of per-sample MSE and ACC by (lead, channel) over many batches (and ranks).

    The state is one float64 tensor `sums: (4, L, V)` holding
    [sum MSE, count MSE, sum ACC, count ACC]; sums add, so a distributed evaluation
    all-reduces it with SUM (`dist.all_reduce(acc.state())`, in place) before reading
    `rmse()` / `acc()`. Leads and channels are fixed up front so every rank holds one shape.
    """

    def __init__(self, channels: Sequence[str], lead_hours: Sequence[float]):
        if not lead_hours or len(set(lead_hours)) != len(lead_hours):
            raise ValueError(f"lead_hours must be a non-empty list of distinct leads, got {list(lead_hours)}")
        self.channels = tuple(channels)
        self.lead_hours = tuple(float(lead) for lead in lead_hours)
        self.sums = torch.zeros(4, len(self.lead_hours), len(self.channels), dtype=torch.float64)

    def update(self, pred: Tensor, target: Tensor, lat: Tensor, lead_hours: Tensor,
               clim: Tensor | None = None, mask: Tensor | None = None) -> None:
        """Add one batch. pred, target, clim: (B, V, H, W); lead_hours: (B,); mask: (B, V).

        Without `clim` only the MSE sums grow (ACC needs a climatology).
        """
        if pred.ndim != 4 or pred.shape[1] != len(self.channels):
            raise ValueError(f"pred must be (B, {len(self.channels)}, H, W) for channels {self.channels}, "
                             f"got {tuple(pred.shape)}")
        lead_index = self._lead_index(lead_hours)
        present = torch.ones(pred.shape[:2], dtype=torch.bool) if mask is None else mask.detach().cpu().bool()
        mse = weighted_mse(pred, target, lat).detach().cpu().double()
        self._add(0, lead_index, mse, present)
        if clim is not None:
            self._add(2, lead_index, acc_per_sample(pred, target, clim, lat).detach().cpu().double(), present)

    def _add(self, row: int, lead_index: Tensor, values: Tensor, present: Tensor) -> None:
        self.sums[row].index_add_(0, lead_index, torch.where(present, values, torch.zeros_like(values)))
        self.sums[row + 1].index_add_(0, lead_index, present.double())

    def _lead_index(self, lead_hours: Tensor) -> Tensor:
        """(B,) lead in hours -> (B,) row index into the tracked leads."""
        known = torch.tensor(self.lead_hours, dtype=torch.float64)
        matches = lead_hours.detach().cpu().double()[:, None] == known[None, :]
        unknown = ~matches.any(dim=1)
        if unknown.any():
            raise ValueError(f"lead(s) {sorted(set(lead_hours.cpu()[unknown].tolist()))} h are not among "
                             f"the tracked leads {self.lead_hours}")
        return matches.double().argmax(dim=1)

    def state(self) -> Tensor:
        """The (4, L, V) float64 sums, returned by reference for an in-place all-reduce."""
        return self.sums

    def merge(self, other: "SkillAccumulator") -> None:
        """Add another accumulator's sums (same channels and leads)."""
        if (other.channels, other.lead_hours) != (self.channels, self.lead_hours):
            raise ValueError(f"cannot merge accumulators over {other.channels} x {other.lead_hours} h "
                             f"into one over {self.channels} x {self.lead_hours} h")
        self.sums += other.sums

    def rmse(self) -> Tensor:
        """(L, V) RMSE = sqrt(sum MSE / count); NaN where nothing was seen."""
        return (self.sums[0] / self.sums[1]).sqrt()

    def acc(self) -> Tensor:
        """(L, V) time-mean ACC = sum ACC / count; NaN where nothing (with a climatology) was seen."""
        return self.sums[2] / self.sums[3]

    def as_dict(self) -> dict[str, float]:
        """Flat `{"rmse/<channel>/<lead>h": value, "acc/<channel>/<lead>h": value}` for loggers."""
        results = {}
        for name, table in (("rmse", self.rmse()), ("acc", self.acc())):
            for i, lead in enumerate(self.lead_hours):
                for j, channel in enumerate(self.channels):
                    results[f"{name}/{channel}/{lead:g}h"] = table[i, j].item()
        return results
