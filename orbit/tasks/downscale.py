"""Downscaling fine-tuning (ORBIT-2 style): coarse toy-Earth fields in, 4x finer fields out.

The model (`orbit.models.downscale_net.DownscaleViT`) keeps the pretrained transformer blocks and
gets a new input embedding (coarse fields interpolated to the fine grid + fine orography and
land-sea mask) and a pixel-shuffle head with a residual convolutional path. It trains on
normalized training-space fields (log1p precipitation) with the latitude-weighted MSE, and is
scored in physical units with the metrics of `orbit.metrics.downscale` against two baselines: bicubic
interpolation of the coarse input, and bicubic plus a per-channel linear regression on the
high-resolution statics (`StaticsRegression`, the terrain correction a network must beat).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from torch import nn

from orbit.config import RunConfig
from orbit.synthetic import fine_scale as downscale
from orbit.data.downscale_dataset import DownscaleBatch, DownscaleDataset, DownscaleLoader
from orbit.data.sampler import evenly_spaced
from orbit.metrics.weather import lat_weighted_mse_loss, latitude_weights
from orbit.metrics.downscale import PERCENTILES, downscaling_scores
from orbit.models.downscale_net import DownscaleViT, upsample_bicubic
from orbit.models.registry import get_config
from orbit.registry import register_task
from orbit.tasks.sections import WEATHER_SECTIONS, check_disjoint_years
from orbit.train.task import Task
from orbit.run.plots import plot_loss_curve, plt
from orbit.train.finetune import prepare_model

METHODS = ("model", "bicubic", "bicubic + statics regression")


@dataclass
class DownscaleOptions:
    """`options:` of a downscaling run: the store (`orbit data downscale`) and the new parts' widths."""

    store: str = "data/downscale/reanalysis_16x32_x4.zarr"
    head_features: int = 32
    refine_hidden: int = 48


@register_task("downscale", options=DownscaleOptions, **WEATHER_SECTIONS)
class DownscaleTask(Task):
    """Train on `data.train_years` of the store, score `eval.max_samples` steps spread over `eval.years`
    (test) and, when set, over `eval.validation_years` (where steps and learning rate are chosen)."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        opts, data = cfg.options, cfg.data
        check_disjoint_years({"data.train_years": data.train_years, "eval.validation_years":
                              cfg.eval.validation_years, "eval.years": cfg.eval.years})
        for name in ("head_features", "refine_hidden"):
            if getattr(opts, name) < 1:
                raise ValueError(f"options.{name} must be >= 1, got {getattr(opts, name)}")
        self.train_set = DownscaleDataset(opts.store, data.channels, data.train_years, cfg.finetune.data_fraction)
        self.eval_set = DownscaleDataset(opts.store, data.channels, cfg.eval.years)
        self.validation_set = (DownscaleDataset(opts.store, data.channels, cfg.eval.validation_years)
                               if cfg.eval.validation_years else None)
        self.lat = torch.as_tensor(self.train_set.lat)
        self.statics = torch.from_numpy(self.train_set.statics)
        self.regression = StaticsRegression.fit(self.train_set, self.cfg.eval.batch_size)
        self._example: dict[str, Any] = {}

    # ------------------------------------------------------------------ model and training
    def build_model(self) -> nn.Module:
        channels = tuple(self.cfg.data.channels)
        config = get_config(self.cfg.model.preset, **{
            "variables": channels, "out_variables": channels,
            "img_size": (len(self.train_set.lat), len(self.train_set.lon)), **self.cfg.model.overrides()})
        opts = self.cfg.options
        model = DownscaleViT(config, self.train_set.scale, len(downscale.STATICS), opts.head_features,
                             opts.refine_hidden)
        return prepare_model(model, self.cfg.finetune)

    def train_batches(self, dp_rank: int, dp_size: int) -> DownscaleLoader:
        return DownscaleLoader(self.train_set, self.cfg.data.batch_size, seed=self.cfg.train.seed, rank=dp_rank,
                               world_size=dp_size)

    def model_inputs(self, batch: DownscaleBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(coarse (B, C, h, w), statics (B, S, H, W)): the statics are one field broadcast per sample."""
        return batch.coarse, self.statics.expand(len(batch), *self.statics.shape)

    def loss(self, output: torch.Tensor, batch: DownscaleBatch) -> torch.Tensor:
        return lat_weighted_mse_loss(output, batch.fine, self.lat.to(output.device))

    # ------------------------------------------------------------------ evaluation
    def _eval_indices(self, dataset: DownscaleDataset) -> list[list[int]]:
        ev = self.cfg.eval
        indices = evenly_spaced(len(dataset), ev.max_samples).tolist()
        return [indices[i:i + ev.batch_size] for i in range(0, len(indices), ev.batch_size)]

    def _predict_eval(self, engine, dataset: DownscaleDataset) -> dict[str, torch.Tensor]:
        """Physical-unit fields of the evaluation steps: model, bicubic, truth (N, C, H, W); coarse (N, C, h, w)."""
        out: dict[str, list[torch.Tensor]] = {name: [] for name in (*METHODS, "truth", "coarse", "index")}
        to_physical = dataset.to_physical
        for chunk in self._eval_indices(dataset):
            batch = dataset.batch(chunk)
            coarse = to_physical(batch.coarse)
            out["model"].append(to_physical(engine.forward(self.model_inputs(batch)).float().cpu()))
            bicubic = bicubic_baseline(coarse, dataset.scale, dataset.channels)
            out["bicubic"].append(bicubic)
            out["bicubic + statics regression"].append(self.regression.predict(bicubic))
            out["truth"].append(to_physical(batch.fine))
            out["coarse"].append(coarse)
            out["index"].append(batch.index)
        return {name: torch.cat(parts) for name, parts in out.items()}

    def _scores(self, engine, dataset: DownscaleDataset) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        fields = self._predict_eval(engine, dataset)
        channels = list(dataset.channels)
        return {method: downscaling_scores(fields[method], fields["truth"], self.lat, channels)
                for method in METHODS}, fields

    def evaluate(self, engine, step: int) -> dict[str, Any]:
        """Test scores (`scores`), and validation scores (`validation_scores`, scalars `val/...`) when
        eval.validation_years is set; the example map is a test case."""
        results: dict[str, Any] = {"scalars": {}}
        if self.validation_set is not None:
            results["validation_scores"], _ = self._scores(engine, self.validation_set)
            results["scalars"].update(_flat_scalars(results["validation_scores"], prefix="val/"))
        scores, fields = self._scores(engine, self.eval_set)
        self._example = {"sample": 0, **{name: fields[name][0].numpy() for name in ("coarse", "bicubic", "model",
                                                                                  "truth")},
                         "time": str(self.eval_set.times[int(fields["index"][0])])[:16]}
        results["scalars"].update(_flat_scalars(scores))
        return {**results, "scores": scores, "samples": int(len(fields["truth"]))}

    def report(self, summary: dict[str, Any], run_dir: Path) -> None:
        run_dir = Path(run_dir)
        table = lambda scores: scores_table({(self.cfg.name if m == "model" else m): scores[m]  # noqa: E731
                                             for m in METHODS})
        text = (f"Downscaling scores on {summary['samples']} held-out test steps of {self.cfg.eval.years} "
                f"(physical units, area-weighted), step {summary.get('step')}\n\n{table(summary['scores'])}\n")
        if "validation_scores" in summary:
            text += (f"\nValidation years {self.cfg.eval.validation_years} (where steps and learning rate "
                     f"are chosen)\n\n{table(summary['validation_scores'])}\n")
        print(text)
        (run_dir / "downscale_scores.md").write_text(text)
        if self._example:
            plot_downscale_maps(self._example, self.eval_set, run_dir / "downscale_maps.png")
        plot_loss_curve(run_dir)

    def predictions(self, engine) -> xr.Dataset:
        """Model output on the fine grid for the evaluation steps: one (time, lat, lon) variable per
        channel in physical units with CF attributes."""
        fields = self._predict_eval(engine, self.eval_set)
        es = self.eval_set
        times = es.times[fields["index"].numpy()]
        data_vars = {c: (("time", "lat", "lon"), fields["model"][:, j].numpy().astype(np.float32), es.attrs[c])
                     for j, c in enumerate(es.channels)}
        coords = {"time": ("time", times, {"long_name": "valid time"}),
                  "lat": ("lat", es.lat, {"units": "degrees_north", "standard_name": "latitude"}),
                  "lon": ("lon", es.lon, {"units": "degrees_east", "standard_name": "longitude"})}
        return xr.Dataset(data_vars, coords=coords, attrs={
            "title": f"ORBIT downscaling x{es.scale} predictions ({self.cfg.name})",
            "source": f"orbit downscale task, model preset {self.cfg.model.preset}", "Conventions": "CF-1.8"})


def _flat_scalars(scores: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """{method: {channel: {metric: value}}} -> {"<prefix><method>_<metric>/<channel>": value} for the log."""
    return {f"{prefix}{method}_{metric}/{channel}": value for method, table in scores.items()
            for channel, row in table.items() for metric, value in row.items()}


def bicubic_baseline(coarse: torch.Tensor, scale: int, channels: tuple[str, ...]) -> torch.Tensor:
    """Bicubic interpolation of physical coarse fields (B, C, h, w) -> (B, C, sh, sw); precipitation >= 0."""
    up = upsample_bicubic(coarse, scale)
    nonnegative = torch.tensor([c in downscale.LOG_CHANNELS for c in channels])[None, :, None, None]
    return torch.where(nonnegative, up.clamp_min(0.0), up)


class StaticsRegression:
    """Baseline: bicubic plus a linear terrain correction, per channel c, in training space T (log1p for tp):

        y_c = T^-1( T(b_c) + beta_c . f ),   f = (1, s_k, s_k - U[B[s_k]] for each static s_k),

    b_c the bicubic of the coarse field, B the block mean, U bicubic upsampling (so s - U[B[s]] is the
    static's fine-scale detail). beta_c minimizes the area-weighted squared residual T(fine) - T(b_c) over the
    training steps and pixels; the features do not change with time, so that is the weighted least squares
    fit of the training-mean residual map. Physical units in and out, precipitation >= 0.
    """

    def __init__(self, features: torch.Tensor, beta: torch.Tensor, channels: tuple[str, ...]):
        self.features, self.beta, self.channels = features, beta, channels  # (K, H, W), (C, K)

    @classmethod
    def fit(cls, dataset: DownscaleDataset, batch_size: int = 64) -> "StaticsRegression":
        statics = torch.from_numpy(dataset.statics).double()  # (S, H, W)
        detail = statics - upsample_bicubic(F.avg_pool2d(statics[None], dataset.scale), dataset.scale)[0]
        features = torch.cat([torch.ones_like(statics[:1]), statics, detail])  # (K, H, W)
        mean_residual = torch.zeros(len(dataset.channels), *statics.shape[1:], dtype=torch.float64)
        for start in range(0, len(dataset), batch_size):
            batch = dataset.batch(range(start, min(start + batch_size, len(dataset))))
            bicubic = bicubic_baseline(dataset.to_physical(batch.coarse), dataset.scale, dataset.channels)
            residual = _training_space(dataset.to_physical(batch.fine), dataset.channels) - _training_space(
                bicubic, dataset.channels)
            mean_residual += residual.double().sum(dim=0) / len(dataset)
        w = latitude_weights(torch.as_tensor(dataset.lat).double())[:, None].expand_as(statics[0]).reshape(-1)
        x = features.reshape(len(features), -1).T * w.sqrt()[:, None]  # (HW, K)
        y = mean_residual.reshape(len(mean_residual), -1).T * w.sqrt()[:, None]  # (HW, C)
        beta = torch.linalg.lstsq(x, y).solution.T  # (C, K)
        return cls(features, beta, dataset.channels)

    def predict(self, bicubic: torch.Tensor) -> torch.Tensor:
        """bicubic: (B, C, H, W) physical -> corrected (B, C, H, W) physical."""
        correction = torch.einsum("ck,khw->chw", self.beta, self.features).to(bicubic.dtype)
        corrected = _training_space(bicubic, self.channels) + correction
        return torch.stack([downscale.to_physical(c, corrected[:, j]) for j, c in enumerate(self.channels)], dim=1)


def _training_space(fields: torch.Tensor, channels: tuple[str, ...]) -> torch.Tensor:
    """(B, C, H, W) physical -> training space per channel (log1p for precipitation)."""
    return torch.stack([downscale.to_training_space(c, fields[:, j]) for j, c in enumerate(channels)], dim=1)


def scores_table(rows: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown table, one row per (method, channel): {method: {channel: scores}} (see downscaling_scores)."""
    columns = ["pearson", "rmse", *[f"rmse_p{q:g}" for q in PERCENTILES], "ssim"]
    header = ["model", "channel", "Pearson", "RMSE", *[f"RMSE >p{q:g}" for q in PERCENTILES], "SSIM"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, table in rows.items():
        for channel, scores in table.items():
            cells = [_format(scores[c], c) for c in columns]
            lines.append(f"| {method} | {channel} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _format(value: float, column: str) -> str:
    if math.isnan(value):
        return "nan"
    return f"{value:.4f}" if column in ("pearson", "ssim") else f"{value:.4g}"


def plot_downscale_maps(example: dict[str, Any], dataset: DownscaleDataset, path: Path) -> Path:
    """One row per channel: low-res input, bicubic, model, truth on a shared colour scale."""
    panels = (("coarse", "low-res input"), ("bicubic", "bicubic"), ("model", "model"), ("truth", "truth"))
    channels = dataset.channels
    fig, axes = plt.subplots(len(channels), len(panels), figsize=(3.3 * len(panels), 1.9 * len(channels)),
                             squeeze=False)
    for row, channel in enumerate(channels):
        values = [example[name][row] for name, _ in panels]
        vmin, vmax = min(float(v.min()) for v in values), max(float(v.max()) for v in values)
        for ax, (name, title), field in zip(axes[row], panels, values):
            lat, lon = (dataset.lat_coarse, dataset.lon_coarse) if name == "coarse" else (dataset.lat, dataset.lon)
            image = ax.pcolormesh(lon, lat, field, vmin=vmin, vmax=vmax, shading="auto")
            ax.set_title(f"{channel} {title}", fontsize=8)
            ax.tick_params(labelsize=6)
        fig.colorbar(image, ax=axes[row].tolist(), shrink=0.8)
    fig.suptitle(f"downscaling x{dataset.scale}, {example['time']}", fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
