"""Multi-source pretraining: predict the state at a sampled lead time from the state now.

Each batch may mix sources with different variable subsets: the inputs and targets live on one
global channel list, absent channels are masked out of the model's variable aggregation and out
of the latitude-weighted MSE loss.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from orbit.config import RunConfig
from orbit.data.dataset import ForecastDataset
from orbit.data.forcings import cos_solar_zenith, lead_valid_time_ns
from orbit.data.loader import ResumableLoader, evaluation_batches, evaluation_inits
from orbit.metrics.weather import lat_weighted_mse_loss
from orbit.models.flops import forward_flops
from orbit.models.registry import create_model, get_config
from orbit.registry import register_task
from orbit.tasks.sections import WEATHER_SECTIONS, check_disjoint_years, year_range
from orbit.train.task import Task
from orbit.tasks.forecast_eval import evaluate_skill, forecast_dataset, print_skill_table, write_skill_figures


def store_paths(root: str | Path, sources: list[str]) -> dict[str, Path]:
    """`<root>/<source>.zarr` for each source; a clear error (and the fix) if one is missing."""
    paths = {source: Path(root) / f"{source}.zarr" for source in sources}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"data stores not found: {missing}; create the toy-Earth stores with "
            f"`orbit data synth --root {root}` (or `make data`), or set data.root to where they are")
    return paths


FORCINGS = ("cos_zenith_init", "cos_zenith_valid")


def residual_scale(lead_hours: torch.Tensor) -> torch.Tensor:
    """(B,) lead times -> (B, 1, 1, 1) typical size of the change over that lead, 1 at 6 h."""
    return (lead_hours / 6.0).sqrt()[:, None, None, None]


@register_task("pretrain", **WEATHER_SECTIONS)
class PretrainTask(Task):
    """Forecast pretraining on the configured stores; evaluation on held-out years."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        data, ev = cfg.data, cfg.eval
        check_disjoint_years({"data.train_years": data.train_years, "eval.validation_years": ev.validation_years,
                              "eval.years": ev.years})
        stores = store_paths(data.root, data.sources)
        open_years = lambda years, leads: ForecastDataset(  # noqa: E731
            stores, channels=data.channels, years=year_range(years), lead_hours=leads, in_memory=data.in_memory)
        self.train_set = open_years(data.train_years, data.leads_hours)
        self.eval_set = open_years(ev.years, ev.leads_hours)
        self.validation_set = open_years(ev.validation_years, ev.leads_hours) if ev.validation_years else None
        self.lat = torch.as_tensor(self.train_set.lat)
        self._example: dict[str, Any] = {}

    def _model_kwargs(self) -> dict[str, Any]:
        channels = tuple(self.cfg.data.channels)
        return dict(variables=channels + self.forcing_names, out_variables=channels,
                    img_size=(self.train_set.lat.size, self.train_set.lon.size), **self.cfg.model.overrides())

    def build_model(self) -> nn.Module:
        return create_model(self.cfg.model.preset, **self._model_kwargs())

    @property
    def forcing_names(self) -> tuple[str, ...]:
        return FORCINGS if self.cfg.data.solar_forcing else ()

    def train_batches(self, dp_rank: int, dp_size: int) -> ResumableLoader:
        data = self.cfg.data
        return ResumableLoader(self.train_set, batch_size=data.batch_size, lead_hours=data.leads_hours,
                               seed=self.cfg.train.seed, rank=dp_rank, world_size=dp_size,
                               num_workers=data.num_workers)

    def model_inputs(self, batch) -> tuple:
        """(x, None, lead_hours, mask): x holds the model's whole vocabulary in order (var_ids None):
        the channels, then the solar forcing at init and valid time when configured."""
        if not self.forcing_names:
            return batch.x, None, batch.lead_hours, batch.mask
        lat, lon = batch.lat, batch.lon
        sun = [cos_solar_zenith(batch.time, lat, lon),
               cos_solar_zenith(lead_valid_time_ns(batch.time, batch.lead_hours), lat, lon)]
        x = torch.cat([batch.x, torch.stack(sun, dim=1).to(batch.x)], dim=1)
        mask = torch.cat([batch.mask, batch.mask.new_ones(len(batch.mask), len(sun))], dim=1)
        return x, None, batch.lead_hours, mask

    def target(self, batch) -> torch.Tensor:
        """What the model output is compared with: (B, V, H, W), NaN where a channel is absent.

        Residual models predict the change from the input in units of its typical size at that
        lead, sqrt(lead / 6 h) (changes grow roughly like a random walk), so short leads weigh as
        much in the loss as long ones instead of being drowned by them.
        """
        if self.cfg.model.residual:
            target = (batch.y - batch.x) / residual_scale(batch.lead_hours)
        else:
            target = batch.y
        return target.masked_fill(~batch.mask[:, :, None, None], float("nan"))

    def predict(self, forward, batch) -> torch.Tensor:
        """Normalized forecast (B, V, H, W) from the model output (see `target`)."""
        out = forward(self.model_inputs(batch)).float().cpu()
        return batch.x + residual_scale(batch.lead_hours) * out if self.cfg.model.residual else out

    def loss(self, output: torch.Tensor, batch) -> torch.Tensor:
        target = self.target(batch)
        present = torch.isfinite(target[:, :, 0, 0])
        return lat_weighted_mse_loss(output, torch.nan_to_num(target), self.lat.to(output.device), present)

    def train_flops_per_sample(self) -> float:
        """Forward + backward (2x forward) of the ViT from its analytic FLOPs."""
        config = get_config(self.cfg.model.preset, **self._model_kwargs())
        return 3.0 * forward_flops(config, batch_size=1)["total"]

    def evaluate(self, engine, step: int) -> dict[str, Any]:
        """Skill on the test years (`skill`, `skill_by_source`) and, when configured, on the
        validation years (`validation`), where every choice of steps or learning rate is made."""
        ev = self.cfg.eval
        score = lambda dataset: evaluate_skill(lambda batch: self.predict(engine.forward, batch),  # noqa: E731
                                               dataset, ev.leads_hours, batch_size=ev.batch_size,
                                               max_samples=ev.max_samples)
        results = score(self.eval_set)
        self._example = results.pop("example")
        if self.validation_set is not None:
            validation = score(self.validation_set)
            validation.pop("example")
            results["scalars"].update({f"val/{k}": v for k, v in validation.pop("scalars").items()})
            results["validation"] = validation
        return results

    @property
    def predicted_channels(self) -> list[str]:
        return list(self.cfg.data.channels)

    def _eval_batches(self, leads: list[int], dataset: ForecastDataset | None = None):
        ev = self.cfg.eval
        return evaluation_batches(self.eval_set if dataset is None else dataset, leads, ev.batch_size, ev.max_samples)

    def predictions(self, engine) -> xr.Dataset:
        """Forecasts of `predicted_channels` at every eval lead for the evaluation init times, in
        physical units: dims (init_time, lead_time, lat, lon) with a `source` coordinate along
        init_time, since sources share init times (what `orbit evaluate` writes)."""
        leads = list(self.cfg.eval.leads_hours)
        ids = [self.eval_set.channels.index(c) for c in self.predicted_channels]
        ev = self.cfg.eval
        indices = evaluation_inits(self.eval_set, ev.max_samples)
        inits = self.eval_set.init_times()[indices]
        sources = [self.eval_set.locate(int(i))[0] for i in indices]
        row_of = {(s, int(t)): i for i, (s, t) in enumerate(zip(sources, inits.astype(np.int64)))}
        values = np.full((inits.size, len(leads), len(ids), self.eval_set.lat.size, self.eval_set.lon.size),
                         np.nan, np.float32)
        for batch in self._eval_batches(leads):
            forecast = batch.denormalize(self.predict(engine.forward, batch))[:, ids].cpu().numpy()
            rows = [row_of[(int(s), int(t))] for s, t in zip(batch.source_index, batch.time)]
            columns = [leads.index(int(lead)) for lead in batch.lead_hours]  # a batch may span two leads
            values[rows, columns] = forecast
        dataset = forecast_dataset(values, list(self.predicted_channels), inits, leads, self.eval_set.lat,
                                   self.eval_set.lon, {
                                       "title": f"ORBIT direct forecasts ({self.cfg.name})",
                                       "source": f"orbit task {self.cfg.task}, sources {self.cfg.data.sources}"})
        names = [self.eval_set.sources[s] for s in sources]
        return dataset.assign_coords(source=("init_time", names, {"long_name": "data source of the case"}))

    def report(self, summary: dict[str, Any], run_dir: Path) -> None:
        if "validation" in summary:
            print_skill_table(summary["validation"]["skill"], summary["validation"]["skill_by_source"], "Validation")
        print_skill_table(summary["skill"], summary.get("skill_by_source"))
        write_skill_figures(summary, self._example, run_dir, self.cfg.data.channels)
