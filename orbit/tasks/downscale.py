"""Downscaling fine-tuning (ORBIT-2 style): coarse toy-Earth fields in, 4x finer fields out.

The model (`orbit.models.downscale_net.DownscaleViT`) keeps the pretrained transformer blocks and
gets a new input embedding (coarse fields interpolated to the fine grid + fine orography and
land-sea mask) and a pixel-shuffle head with a residual convolutional path. It trains on
normalized training-space fields (log1p precipitation) with the latitude-weighted MSE, and is
scored in physical units against bicubic interpolation of the coarse input with the metrics of
`orbit.metrics.downscale`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from orbit.config import RunConfig
from orbit.synthetic import fine_scale as downscale
from orbit.data.downscale_dataset import DownscaleBatch, DownscaleDataset, DownscaleLoader
from orbit.metrics.weather import lat_weighted_mse_loss
from orbit.metrics.downscale import PERCENTILES, downscaling_scores
from orbit.models.downscale_net import DownscaleViT, upsample_bicubic
from orbit.models.registry import get_config
from orbit.registry import register_task
from orbit.tasks.sections import WEATHER_SECTIONS
from orbit.train.task import Task
from orbit.run.plots import plot_loss_curve, plt
from orbit.train.finetune import prepare_model

METHODS = ("model", "bicubic")


@dataclass
class DownscaleOptions:
    """`options:` of a downscaling run: the store (`orbit data downscale`) and the new parts' widths."""

    store: str = "data/downscale/reanalysis_16x32_x4.zarr"
    head_features: int = 32
    refine_hidden: int = 48


@register_task("downscale", options=DownscaleOptions, **WEATHER_SECTIONS)
class DownscaleTask(Task):
    """Train on `data.train_years` of the store, score every `eval.stride`-th step of `eval.years`."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        opts, data = cfg.options, cfg.data
        train_years, eval_years = data.train_years, cfg.eval.years
        if train_years[1] >= eval_years[0] and eval_years[1] >= train_years[0]:
            raise ValueError(f"eval.years {eval_years} overlap data.train_years {train_years}; evaluation must "
                             f"use held-out years")
        for name in ("head_features", "refine_hidden"):
            if getattr(opts, name) < 1:
                raise ValueError(f"options.{name} must be >= 1, got {getattr(opts, name)}")
        self.train_set = DownscaleDataset(opts.store, data.channels, train_years, cfg.finetune.data_fraction)
        self.eval_set = DownscaleDataset(opts.store, data.channels, eval_years)
        self.lat = torch.as_tensor(self.train_set.lat)
        self.statics = torch.from_numpy(self.train_set.statics)
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
    def _eval_indices(self) -> list[list[int]]:
        ev = self.cfg.eval
        indices = np.arange(0, len(self.eval_set), ev.stride)[:ev.max_samples].tolist()
        return [indices[i:i + ev.batch_size] for i in range(0, len(indices), ev.batch_size)]

    def _predict_eval(self, engine) -> dict[str, torch.Tensor]:
        """Physical-unit fields of the evaluation steps: model, bicubic, truth (N, C, H, W); coarse (N, C, h, w)."""
        out: dict[str, list[torch.Tensor]] = {"model": [], "bicubic": [], "truth": [], "coarse": [], "index": []}
        to_physical = self.eval_set.to_physical
        for chunk in self._eval_indices():
            batch = self.eval_set.batch(chunk)
            coarse = to_physical(batch.coarse)
            out["model"].append(to_physical(engine.forward(self.model_inputs(batch)).float().cpu()))
            out["bicubic"].append(bicubic_baseline(coarse, self.eval_set.scale, self.eval_set.channels))
            out["truth"].append(to_physical(batch.fine))
            out["coarse"].append(coarse)
            out["index"].append(batch.index)
        return {name: torch.cat(parts) for name, parts in out.items()}

    def evaluate(self, engine, step: int) -> dict[str, Any]:
        fields = self._predict_eval(engine)
        channels = list(self.eval_set.channels)
        scores = {method: downscaling_scores(fields[method], fields["truth"], self.lat, channels)
                  for method in METHODS}
        self._example = {"sample": 0, **{name: fields[name][0].numpy() for name in ("coarse", "bicubic", "model",
                                                                                  "truth")},
                         "time": str(self.eval_set.times[int(fields["index"][0])])[:16]}
        scalars = {f"{method}_{metric}/{channel}": value for method, table in scores.items()
                   for channel, row in table.items() for metric, value in row.items()}
        return {"scalars": scalars, "scores": scores, "samples": int(len(fields["truth"]))}

    def report(self, summary: dict[str, Any], run_dir: Path) -> None:
        run_dir = Path(run_dir)
        table = scores_table({self.cfg.name: summary["scores"]["model"], "bicubic": summary["scores"]["bicubic"]})
        print(table)
        (run_dir / "downscale_scores.md").write_text(
            f"Downscaling scores on {summary['samples']} held-out steps of {self.cfg.eval.years} "
            f"(physical units, area-weighted), step {summary.get('step')}\n\n{table}\n")
        if self._example:
            plot_downscale_maps(self._example, self.eval_set, run_dir / "downscale_maps.png")
        plot_loss_curve(run_dir)

    def predictions(self, engine) -> xr.Dataset:
        """Model output on the fine grid for the evaluation steps: one (time, lat, lon) variable per
        channel in physical units with CF attributes."""
        fields = self._predict_eval(engine)
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


def bicubic_baseline(coarse: torch.Tensor, scale: int, channels: tuple[str, ...]) -> torch.Tensor:
    """Bicubic interpolation of physical coarse fields (B, C, h, w) -> (B, C, sh, sw); precipitation >= 0."""
    up = upsample_bicubic(coarse, scale)
    nonnegative = torch.tensor([c in downscale.LOG_CHANNELS for c in channels])[None, :, None, None]
    return torch.where(nonnegative, up.clamp_min(0.0), up)


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
