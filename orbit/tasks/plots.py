"""PNG figures for a run directory: loss curve, skill against lead time, forecast maps."""
from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless clusters and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

FORECASTERS = ("model", "persistence", "climatology")


def plot_loss_curve(run_dir: Path) -> Path:
    with open(Path(run_dir) / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    steps = [int(r["step"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, [float(r["loss"]) for r in rows])
    ax.set(xlabel="step", ylabel="training loss (lat-weighted MSE, normalized)", yscale="log")
    ax.grid(alpha=0.3)
    return _save(fig, Path(run_dir) / "loss.png")


def plot_skill_vs_lead(skill: dict, run_dir: Path, channels: list[str], forecasters: tuple[str, ...] = FORECASTERS,
                       metric: str = "rmse") -> Path:
    """One panel per channel: `metric` ("rmse" or "acc") of each forecaster against lead time,
    written to `<run_dir>/skill_<metric>.png`; a missing score (None) leaves a gap."""
    ncols = min(4, len(channels))
    nrows = int(np.ceil(len(channels) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.6 * nrows), squeeze=False)
    for ax, channel in zip(axes.flat, channels):
        leads = sorted(skill[channel], key=int)
        for name in forecasters:
            values = [skill[channel][h][name][metric] for h in leads]
            ax.plot([int(h) for h in leads], [np.nan if v is None else v for v in values], marker="o",
                    label=name)
        ax.set_title(channel, fontsize=9)
        ax.set_xlabel("lead (h)", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(channels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"latitude-weighted {metric.upper()} on held-out years")
    return _save(fig, Path(run_dir) / f"skill_{metric}.png")


def plot_forecast_maps(maps: dict[str, np.ndarray], lat: np.ndarray, lon: np.ndarray, title: str,
                       path: Path) -> Path:
    """Side-by-side maps (e.g. input, forecast, truth, error) on a shared colour scale, error apart."""
    fig, axes = plt.subplots(1, len(maps), figsize=(3.6 * len(maps), 2.4), squeeze=False)
    values = [v for k, v in maps.items() if k != "error"]
    vmin, vmax = min(float(v.min()) for v in values), max(float(v.max()) for v in values)
    for ax, (name, field) in zip(axes.flat, maps.items()):
        if name == "error":
            bound = float(np.abs(field).max()) or 1.0
            image = ax.pcolormesh(lon, lat, field, cmap="RdBu_r", vmin=-bound, vmax=bound, shading="auto")
        else:
            image = ax.pcolormesh(lon, lat, field, vmin=vmin, vmax=vmax, shading="auto")
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=6)
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_skill_comparison(runs: dict[str, dict], channels: list[str], path: Path, forecaster: str = "direct",
                          metric: str = "rmse") -> Path:
    """One panel per channel: `metric` of `forecaster` against lead time for each run (label -> skill
    as in a forecast summary), with the first run's persistence and climatology as grey references."""
    ncols = min(4, len(channels))
    nrows = int(np.ceil(len(channels) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.8 * nrows), squeeze=False)
    reference = next(iter(runs.values()))
    for ax, channel in zip(axes.flat, channels):
        leads = sorted(reference[channel], key=int)
        hours = [int(h) for h in leads]
        for label, skill in runs.items():
            values = [skill[channel][h][forecaster][metric] for h in leads]
            ax.plot(hours, [np.nan if v is None else v for v in values], marker="o", ms=3, label=label)
        for name, style in (("persistence", ":"), ("climatology", "--")):
            values = [reference[channel][h][name][metric] for h in leads]
            if any(v is not None for v in values):
                ax.plot(hours, [np.nan if v is None else v for v in values], color="grey", ls=style, label=name)
        ax.set_title(channel, fontsize=9)
        ax.set_xlabel("lead (h)", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(channels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.suptitle(f"{forecaster} forecast {metric.upper()} on held-out years")
    return _save(fig, path)
