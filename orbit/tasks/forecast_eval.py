"""Held-out forecast evaluation against the two baselines every forecast must beat.

Persistence (the state at init time) and climatology (the store's day-of-year x hour mean at the
valid time) are scored with the same WeatherBench2 metrics as the model, in physical units, on
the same (init time, lead) pairs.
"""
from __future__ import annotations

import math
from pathlib import Path
from collections.abc import Iterable
from typing import Any, Callable

import re

import numpy as np
import torch
import xarray as xr

from orbit.data.batch import Batch
from orbit.data.dataset import ForecastDataset
from orbit.data.loader import evaluation_batches
from orbit.data.store import VARIABLE_ATTRS
from orbit.metrics.weather import SkillAccumulator
from orbit.run.plots import FORECASTERS, plot_forecast_maps, plot_loss_curve, plot_skill_vs_lead

EXAMPLE_CHANNELS = ("t2m", "z500", "t850")


def _finite_or_none(value: float) -> float | None:
    return None if math.isnan(value) else value


def evaluate_skill(predict: Callable[[Batch], torch.Tensor], dataset: ForecastDataset, leads_hours: list[int],
                   *, batch_size: int, max_samples: int) -> dict[str, Any]:
    """RMSE and ACC of model, persistence and climatology per channel and lead, over
    `max_samples` init times per source spread over the evaluation years.

    Returns {"skill": {channel: {lead: {forecaster: {"rmse", "acc"}}}} pooled over sources,
    "skill_by_source": {source: skill}, "scalars": flat model metrics for loggers, "example":
    maps of one forecast for plotting}.
    """
    batches = evaluation_batches(dataset, leads_hours, batch_size, max_samples)
    return score_forecasts(((batch, predict(batch)) for batch in batches), dataset, leads_hours)


def score_forecasts(forecasts: Iterable[tuple[Batch, torch.Tensor]], dataset: ForecastDataset,
                    leads_hours: list[int]) -> dict[str, Any]:
    """`evaluate_skill` for model forecasts made any way (direct, rollout): pairs of an evaluation
    batch (init state `x`, truth `y` at `time + lead_hours`) and the model's normalized forecast
    (B, V, H, W) for it. Same return value as `evaluate_skill`."""
    pooled = {name: SkillAccumulator(dataset.channels, leads_hours) for name in FORECASTERS}
    by_source = {source: {name: SkillAccumulator(dataset.channels, leads_hours) for name in FORECASTERS}
                 for source in dataset.sources}
    example: dict[str, Any] = {}
    for batch, model_forecast in forecasts:
        clim = dataset.target_climatology(batch)
        forecasts = {"model": model_forecast.float(), "persistence": batch.x, "climatology": clim}
        truth, clim_phys = batch.denormalize(batch.y), batch.denormalize(clim)
        for name, field in forecasts.items():
            pred = batch.denormalize(field)
            pooled[name].update(pred, truth, batch.lat, batch.lead_hours, clim=clim_phys, mask=batch.mask)
            for s, source in enumerate(batch.sources):
                rows = batch.source_index.cpu() == s
                if rows.any():
                    by_source[source][name].update(pred[rows], truth[rows], batch.lat, batch.lead_hours[rows],
                                                   clim=clim_phys[rows], mask=batch.mask[rows])
        at_max_lead = torch.nonzero(batch.lead_hours == max(leads_hours)).flatten()
        if not example and len(at_max_lead):
            example = _example_maps(batch, int(at_max_lead[0]), batch.denormalize(forecasts["model"]), truth)
    scalars = {k: v for k, v in pooled["model"].as_dict().items() if not math.isnan(v)}
    return {"skill": _skill_table(pooled, dataset.channels, leads_hours),
            "skill_by_source": {source: _skill_table(scores, dataset.channels, leads_hours)
                                for source, scores in by_source.items()},
            "scalars": scalars, "example": example}


def _skill_table(scores: dict[str, SkillAccumulator], channels: Iterable[str],
                 leads_hours: list[int]) -> dict[str, Any]:
    """{channel: {lead: {forecaster: {"rmse", "acc"}}}} of accumulated scores (None: not scored)."""
    tables = {name: (acc.rmse(), acc.acc()) for name, acc in scores.items()}
    return {channel: {str(lead): {name: {"rmse": _finite_or_none(rmse[i, j].item()),
                                         "acc": _finite_or_none(acc[i, j].item())}
                                  for name, (rmse, acc) in tables.items()}
                      for i, lead in enumerate(leads_hours)}
            for j, channel in enumerate(channels)}


def _example_maps(batch: Batch, b: int, forecast: torch.Tensor, truth: torch.Tensor) -> dict[str, Any]:
    """Input, forecast, truth and error of the first present example channel of sample b."""
    present = [c for c in EXAMPLE_CHANNELS if c in batch.channels and batch.mask[b, batch.channels.index(c)]]
    if not present:
        return {}
    v = batch.channels.index(present[0])
    fields = {"input": batch.denormalize(batch.x)[b, v], "forecast": forecast[b, v], "truth": truth[b, v]}
    maps = {name: field.cpu().numpy() for name, field in fields.items()}
    maps["error"] = maps["forecast"] - maps["truth"]
    init = np.datetime64(int(batch.time[b]), "ns").astype("datetime64[h]")
    return {"maps": maps, "lat": batch.lat.cpu().numpy(), "lon": batch.lon.cpu().numpy(),
            "title": f"{present[0]} from {init} + {batch.lead_hours[b].item():g} h "
                     f"({batch.sources[int(batch.source_index[b])]})"}


def skill_rows(skill: dict[str, Any]) -> list[list[str]]:
    """Rows of channel, lead, model/persistence/climatology RMSE, model/persistence ACC, verdict."""
    rows = []
    for channel, by_lead in skill.items():
        for lead, scores in by_lead.items():
            model, persistence, climatology = (scores[name] for name in FORECASTERS)
            if model["rmse"] is None:
                continue
            beats = model["rmse"] < persistence["rmse"] and model["rmse"] < climatology["rmse"]
            fmt = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
            rows.append([channel, f"{lead} h", fmt(model["rmse"]), fmt(persistence["rmse"]),
                         fmt(climatology["rmse"]), fmt(model["acc"]), fmt(persistence["acc"]),
                         "yes" if beats else "no"])
    return rows


SKILL_HEADER = ["channel", "lead", "RMSE model", "RMSE persistence", "RMSE climatology", "ACC model",
                "ACC persistence", "beats both"]


# Channels that are exact functions of others (toy Earth; nearly so in reanalysis): a win there
# repeats wins on the channels they derive from, so win counts leave them out.
DERIVED_CHANNELS = {"z850": "hypsometric: z500 - R_d ln(850/500) (t500 + t850) / 2"}


def count_wins(skill: dict[str, Any]) -> tuple[int, int]:
    """(pairs where the model beats both baselines, pairs scored) over independent channels."""
    rows = [row for row in skill_rows(skill) if row[0] not in DERIVED_CHANNELS]
    return sum(row[-1] == "yes" for row in rows), len(rows)


def print_skill_table(skill: dict[str, Any], by_source: dict[str, Any] | None = None, title: str = "Test") -> None:
    rows = skill_rows(skill)
    widths = [max(len(str(r[i])) for r in [SKILL_HEADER, *rows]) for i in range(len(SKILL_HEADER))]
    line = lambda r: "  ".join(str(v).rjust(w) for v, w in zip(r, widths))  # noqa: E731
    print(f"\n{title} skill, all sources pooled (latitude-weighted, physical units):")
    print(line(SKILL_HEADER))
    for row in rows:
        print(line(row))
    derived = ", ".join(f"{c} ({why})" for c, why in DERIVED_CHANNELS.items() if c in skill)
    wins, pairs = count_wins(skill)
    print(f"model beats persistence and climatology in {wins}/{pairs} (channel, lead) pairs of independent "
          f"channels{'; not counted: ' + derived if derived else ''}")
    for source, source_skill in (by_source or {}).items():
        wins, pairs = count_wins(source_skill)
        print(f"  {source}: {wins}/{pairs}")
    print()


def write_skill_figures(summary: dict[str, Any], example: dict[str, Any], run_dir: Path,
                        channels: list[str]) -> None:
    plot_loss_curve(run_dir)
    plot_skill_vs_lead(summary["skill"], run_dir, channels)
    if example:
        plot_forecast_maps(example["maps"], example["lat"], example["lon"], example["title"],
                           Path(run_dir) / "forecast_example.png")


def channel_attrs(channel: str) -> dict[str, str]:
    """CF attributes of a channel name: `t2m` as stored, `z500` = geopotential at 500 hPa."""
    if channel in VARIABLE_ATTRS:
        return dict(VARIABLE_ATTRS[channel])
    match = re.fullmatch(r"([a-z]+)(\d+)", channel)
    if not match or match.group(1) not in VARIABLE_ATTRS:
        return {}
    attrs = dict(VARIABLE_ATTRS[match.group(1)])
    attrs["long_name"] = f"{attrs['long_name']} at {match.group(2)} hPa"
    return attrs


def forecast_dataset(values: np.ndarray, channels: list[str], init_times: np.ndarray, leads_hours: list[int],
                     lat: np.ndarray, lon: np.ndarray, attrs: dict[str, Any]) -> xr.Dataset:
    """values: (N_init, N_lead, C, H, W) physical units -> one variable per channel with dims
    (init_time, lead_time, lat, lon), CF coordinates and a 2-D valid_time."""
    init = np.asarray(init_times, dtype="datetime64[ns]")
    lead = np.asarray(leads_hours, dtype="timedelta64[h]").astype("timedelta64[ns]")
    coords = {
        "init_time": ("init_time", init, {"standard_name": "forecast_reference_time", "long_name": "initial time"}),
        "lead_time": ("lead_time", lead, {"standard_name": "forecast_period", "long_name": "lead time"}),
        "lat": ("lat", np.asarray(lat, np.float32), {"units": "degrees_north", "standard_name": "latitude"}),
        "lon": ("lon", np.asarray(lon, np.float32), {"units": "degrees_east", "standard_name": "longitude"}),
        "valid_time": (("init_time", "lead_time"), init[:, None] + lead[None, :], {"standard_name": "time"}),
    }
    data = {c: (("init_time", "lead_time", "lat", "lon"), values[:, :, j].astype(np.float32), channel_attrs(c))
            for j, c in enumerate(channels)}
    return xr.Dataset(data, coords=coords, attrs={"Conventions": "CF-1.8", **attrs})
