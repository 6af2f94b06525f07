"""PNG figures for a run directory: loss curve, skill against lead time, forecast maps."""
from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless clusters and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

FORECASTERS = ("model", "persistence", "climatology")


def plot_loss_curve(run_dir: Path) -> Path | None:
    """`<run_dir>/loss.png` from metrics.csv; None where there is no training log (the output
    directory of `orbit evaluate`)."""
    metrics = Path(run_dir) / "metrics.csv"
    if not metrics.is_file():
        return None
    with open(metrics) as handle:
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
    fig, axes = _channel_panels(channels, (3.2, 2.6))
    for ax, channel in zip(axes.flat, channels):
        leads = sorted(skill[channel], key=int)
        for name in forecasters:
            _score_curve(ax, skill[channel], leads, name, metric, marker="o", label=name)
    title = f"latitude-weighted {metric.upper()} on held-out years"
    return _finish_panels(fig, axes, channels, title, 7, Path(run_dir) / f"skill_{metric}.png")


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
    fig, axes = _channel_panels(channels, (3.4, 2.8))
    reference = next(iter(runs.values()))
    for ax, channel in zip(axes.flat, channels):
        leads = sorted(reference[channel], key=int)
        for label, skill in runs.items():
            _score_curve(ax, skill[channel], leads, forecaster, metric, marker="o", ms=3, label=label)
        for name, style in (("persistence", ":"), ("climatology", "--")):
            if any(reference[channel][h][name][metric] is not None for h in leads):
                _score_curve(ax, reference[channel], leads, name, metric, color="grey", ls=style, label=name)
    title = f"{forecaster} forecast {metric.upper()} on held-out years"
    return _finish_panels(fig, axes, channels, title, 6, path)


def _channel_panels(channels: list[str], panel_inches: tuple[float, float]):
    """A grid of up to 4 panels per row, one per channel: (figure, axes array)."""
    ncols = min(4, len(channels))
    nrows = int(np.ceil(len(channels) / ncols))
    width, height = panel_inches
    return plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)


def _score_curve(ax, by_lead: dict, leads: list[str], name: str, metric: str, **style) -> None:
    """`by_lead[lead][name][metric]` against lead hours; a missing score (None) leaves a gap."""
    values = [by_lead[h][name][metric] for h in leads]
    ax.plot([int(h) for h in leads], [np.nan if v is None else v for v in values], **style)


def _finish_panels(fig, axes, channels: list[str], title: str, legend_size: int, path: Path) -> Path:
    for ax, channel in zip(axes.flat, channels):
        ax.set_title(channel, fontsize=9)
        ax.set_xlabel("lead (h)", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(channels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=legend_size)
    fig.suptitle(title)
    return _save(fig, path)
