"""Weather forecasting: fine-tune the pretrained ORBIT on a reanalysis, score it WeatherBench-style.

The model keeps the pretrained vocabulary (the 14 channels and the two solar forcing inputs) AND
predicts the whole state: the patch/variable embeddings and the head then all load from the
pretraining checkpoint (`finetune.replace: []`), and a forecast can be fed back as the next
input, which the iterative `rollout` needs. Only the WeatherBench headline variables
(`options.score_channels`) are scored, tabulated and written as predictions.

Two ways to reach a lead L, scored on the same held-out initial times:
- direct: one pass with the lead-time embedding set to L (trained on `data.leads_hours`);
- rollout: L / `options.rollout_step_hours` passes of the short-lead forecast (`orbit.tasks.rollout`).
Both are compared with persistence and climatology (latitude-weighted RMSE and ACC, WB2 conventions).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from orbit.data.batch import Batch
from orbit.data.dataset import ForecastDataset
from orbit.data.loader import ResumableLoader
from orbit.registry import register_task
from orbit.tasks.sections import WEATHER_SECTIONS
from orbit.tasks.forecast_compare import normalized_rmse
from orbit.tasks.forecast_eval import channel_attrs, score_forecasts
from orbit.run.plots import plot_forecast_maps, plot_loss_curve, plot_skill_vs_lead
from orbit.tasks.pretrain import PretrainTask
from orbit.tasks.rollout import rollout
from orbit.train.finetune import prepare_model
from orbit.train.logging import log

METHODS = ("direct", "rollout")
BASELINES = ("persistence", "climatology")
NS_PER_HOUR = 3_600_000_000_000


@dataclass
class ForecastOptions:
    """score_channels: the variables scored, tabulated and written as predictions (the model
    predicts every data channel); rollout_step_hours: the lead of one rollout step (one of
    data.leads_hours); map_lead_hours: the lead (one of eval.leads_hours) of the example maps."""

    score_channels: list[str] = field(default_factory=lambda: ["z500", "t850", "t2m", "u10", "v10"])
    rollout_step_hours: int = 6
    map_lead_hours: int = 72


# --------------------------------------------------------------------------- data fraction


def leading_fraction(init_times: np.ndarray, fraction: float) -> np.ndarray:
    """Flat indices of the earliest ceil(fraction * N) init times, in index order: (K,) int64.

    A contiguous span of time rather than a random subset: 6-hourly states a few hours apart are
    nearly copies of each other, so a random 10% would still cover every season and hold almost
    all the information; the first 10% of the period is what "less reanalysis" really means.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"data fraction must be in (0, 1], got {fraction}")
    count = math.ceil(fraction * len(init_times))
    return np.sort(np.argsort(np.asarray(init_times), kind="stable")[:count]).astype(np.int64)


class InitTimeSubset:
    """The forecast pairs of a `ForecastDataset` whose init times are `indices` (what
    `ResumableLoader` needs: len, lead_hours, collate, `[(index, lead)]`)."""

    def __init__(self, dataset: ForecastDataset, indices: np.ndarray):
        self.dataset, self.indices = dataset, np.asarray(indices, dtype=np.int64)
        self.lead_hours, self.collate = dataset.lead_hours, dataset.collate

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, key: tuple[int, float]):
        index, lead = key
        return self.dataset[(int(self.indices[index]), lead)]


# --------------------------------------------------------------------------- the task


@register_task("forecast", options=ForecastOptions, **WEATHER_SECTIONS)
class ForecastTask(PretrainTask):
    """Fine-tuning for medium-range forecasts on `data.sources` (the reanalysis): the pretraining
    task's data, inputs, residual target and loss, plus a data fraction, rollout and scorecard."""

    def __init__(self, cfg):
        super().__init__(cfg)  # opens the stores; checks train and eval years do not overlap
        self.options: ForecastOptions = cfg.options
        self._check_options()
        self.train_subset = InitTimeSubset(
            self.train_set, leading_fraction(self.train_set.init_times(), cfg.finetune.data_fraction))
        self._maps: dict[str, Any] = {}

    def _check_options(self) -> None:
        opts, cfg = self.options, self.cfg
        unknown = sorted(set(opts.score_channels) - set(cfg.data.channels))
        if not opts.score_channels or unknown:
            raise ValueError(f"options.score_channels={opts.score_channels} must be a non-empty subset of "
                             f"data.channels {cfg.data.channels} (unknown: {unknown})")
        if opts.rollout_step_hours not in cfg.data.leads_hours:
            raise ValueError(f"options.rollout_step_hours={opts.rollout_step_hours} must be a trained lead, "
                             f"one of data.leads_hours {cfg.data.leads_hours}")
        if not self.rollout_leads:
            raise ValueError(f"no eval.leads_hours {cfg.eval.leads_hours} is a multiple of "
                             f"options.rollout_step_hours={opts.rollout_step_hours}; rollout cannot be scored")
        if opts.map_lead_hours not in cfg.eval.leads_hours:
            raise ValueError(f"options.map_lead_hours={opts.map_lead_hours} must be one of eval.leads_hours "
                             f"{cfg.eval.leads_hours}")

    @property
    def predicted_channels(self) -> list[str]:
        return list(self.options.score_channels)

    @property
    def rollout_leads(self) -> list[int]:
        """The eval leads a rollout of `rollout_step_hours` steps lands on."""
        return [lead for lead in self.cfg.eval.leads_hours if lead % self.options.rollout_step_hours == 0]

    def build_model(self) -> nn.Module:
        return prepare_model(super().build_model(), self.cfg.finetune)

    def train_batches(self, dp_rank: int, dp_size: int) -> ResumableLoader:
        data = self.cfg.data
        log.info("fine-tuning on %d of %d training init times (finetune.data_fraction=%g)",
                 len(self.train_subset), len(self.train_set), self.cfg.finetune.data_fraction)
        return ResumableLoader(self.train_subset, batch_size=data.batch_size, lead_hours=data.leads_hours,
                               seed=self.cfg.train.seed, rank=dp_rank, world_size=dp_size,
                               num_workers=data.num_workers)

    # ------------------------------------------------------------------ forecasts

    def rollout(self, forward: Callable[[tuple], torch.Tensor], batch: Batch,
                steps: int) -> Iterator[tuple[float, torch.Tensor]]:
        """Iterative forecast from `batch.x`: yields (lead_hours, normalized state (B, V, H, W))
        every `options.rollout_step_hours`, `steps` times."""
        return rollout(lambda b: self.predict(forward, b), batch, self.options.rollout_step_hours, steps)

    def direct_forecasts(self, forward, dataset=None) -> Iterator[tuple[Batch, torch.Tensor]]:
        """(evaluation batch, normalized direct forecast) for every eval lead, lead by lead, on the
        test years (or `dataset`)."""
        for batch in self._eval_batches(self.cfg.eval.leads_hours, dataset):
            forecast = self.predict(forward, batch)
            if dataset is None:  # example maps show test cases only
                self._keep_map(batch, forecast, "direct")
            yield batch, forecast

    def rollout_forecasts(self, forward, dataset=None) -> Iterator[tuple[Batch, torch.Tensor]]:
        """(evaluation batch, normalized rollout forecast) at every eval lead a rollout lands on.

        One rollout per init batch serves all leads: the per-lead loaders visit the same init
        times in the same order, so their batches give the truth at each lead."""
        leads = self.rollout_leads
        steps = max(leads) // self.options.rollout_step_hours
        for by_lead in zip(*(self._eval_batches([lead], dataset) for lead in leads)):
            truth_at = dict(zip(leads, by_lead))
            for lead, forecast in self.rollout(forward, by_lead[0], steps):
                if int(lead) not in truth_at:
                    continue
                if dataset is None:  # example maps show test cases only
                    self._keep_map(truth_at[int(lead)], forecast, "rollout")
                yield truth_at[int(lead)], forecast

    def _keep_map(self, batch: Batch, forecast: torch.Tensor, method: str) -> None:
        """Keep the first sample at `map_lead_hours` of each method for the example maps."""
        at_lead = torch.nonzero(batch.lead_hours == self.options.map_lead_hours).flatten()
        if method in self._maps or not len(at_lead):
            return
        b, ids = int(at_lead[0]), [batch.channels.index(c) for c in self.options.score_channels]
        self._maps[method] = {
            "input": batch.denormalize(batch.x)[b, ids].cpu().numpy(),
            "forecast": batch.denormalize(forecast.float())[b, ids].cpu().numpy(),
            "truth": batch.denormalize(batch.y)[b, ids].cpu().numpy(),
            "init": str(np.datetime64(int(batch.time[b]), "ns").astype("datetime64[h]")),
        }

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, engine, step: int) -> dict[str, Any]:
        """Scorecard of direct and rollout forecasts vs persistence and climatology on eval.years
        (`skill`) and, when configured, on eval.validation_years (`validation_skill`: where steps
        and learning rate are chosen)."""
        self._maps = {}
        skill = self._scorecard(engine.forward)
        scalars = {f"{method}/{metric}/{c}/{lead}h": value
                   for c, by_lead in skill.items() for lead, scores in by_lead.items()
                   for method in METHODS for metric, value in scores[method].items() if value is not None}
        results = {"skill": skill, "scalars": scalars, "rollout_step_hours": self.options.rollout_step_hours,
                   "data_fraction": self.cfg.finetune.data_fraction, "init": self.cfg.finetune.init}
        if self.validation_set is not None:
            results["validation_skill"] = self._scorecard(engine.forward, self.validation_set)
            results["scalars"]["val/direct_rmse_over_climatology"] = normalized_rmse(results["validation_skill"])
        return results

    def _scorecard(self, forward, dataset=None) -> dict[str, Any]:
        """{channel: {lead: {direct, rollout, persistence, climatology: {rmse, acc}}}} on `dataset`
        (default: the test years)."""
        leads, scored = self.cfg.eval.leads_hours, self.eval_set if dataset is None else dataset
        direct = score_forecasts(self.direct_forecasts(forward, dataset), scored, leads)["skill"]
        rolled = score_forecasts(self.rollout_forecasts(forward, dataset), scored, leads)["skill"]
        return {c: {lead: {"direct": direct[c][lead]["model"], "rollout": rolled[c][lead]["model"],
                           **{b: direct[c][lead][b] for b in BASELINES}}
                    for lead in direct[c]}
                for c in self.options.score_channels}

    def report(self, summary: dict[str, Any], run_dir: Path) -> None:
        run_dir = Path(run_dir)
        table = scorecard_markdown(summary["skill"])
        print(table)
        (run_dir / "scorecard.md").write_text(table)
        plot_loss_curve(run_dir)
        forecasters = (*METHODS, *BASELINES)
        channels = list(self.options.score_channels)
        plot_skill_vs_lead(summary["skill"], run_dir, channels, forecasters=forecasters)
        plot_skill_vs_lead(summary["skill"], run_dir, channels, forecasters=forecasters[:-1], metric="acc")
        self._plot_maps(run_dir)

    def _plot_maps(self, run_dir: Path) -> None:
        if "direct" not in self._maps:
            return
        direct, lead = self._maps["direct"], self.options.map_lead_hours
        lat, lon = self.eval_set.lat, self.eval_set.lon
        for j, channel in enumerate(self.options.score_channels):
            maps = {"input": direct["input"][j], "direct": direct["forecast"][j]}
            if "rollout" in self._maps:
                maps["rollout"] = self._maps["rollout"]["forecast"][j]
            maps["truth"] = direct["truth"][j]
            maps["error"] = direct["forecast"][j] - direct["truth"][j]
            units = channel_attrs(channel).get("units", "")
            plot_forecast_maps(maps, lat, lon, f"{channel} [{units}] from {direct['init']} + {lead} h "
                               f"(error = direct - truth)", run_dir / f"forecast_maps_{channel}.png")

# --------------------------------------------------------------------------- scorecard


def scorecard_rows(skill: dict[str, Any]) -> list[list[str]]:
    """One row per (variable, lead): RMSE and ACC of each method and baseline, and the verdict."""
    fmt = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
    rows = []
    for channel, by_lead in skill.items():
        for lead, s in by_lead.items():
            baseline = min(s[b]["rmse"] for b in BASELINES)
            verdict = ["yes" if s[m]["rmse"] is not None and s[m]["rmse"] < baseline else
                       ("-" if s[m]["rmse"] is None else "no") for m in METHODS]
            rows.append([channel, f"{lead} h", *(fmt(s[n]["rmse"]) for n in (*METHODS, *BASELINES)),
                         *(fmt(s[n]["acc"]) for n in (*METHODS, "persistence")), *verdict])
    return rows


SCORECARD_HEADER = ["variable", "lead", "RMSE direct", "RMSE rollout", "RMSE persistence", "RMSE climatology",
                    "ACC direct", "ACC rollout", "ACC persistence", "direct beats both", "rollout beats both"]


def scorecard_markdown(skill: dict[str, Any]) -> str:
    """The scorecard as a markdown table plus a line counting the wins of each method."""
    rows = scorecard_rows(skill)
    lines = ["| " + " | ".join(SCORECARD_HEADER) + " |", "|" + "---|" * len(SCORECARD_HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    wins = []
    for k, method in enumerate(METHODS):
        verdicts = [row[len(SCORECARD_HEADER) - len(METHODS) + k] for row in rows]
        scored = [v for v in verdicts if v != "-"]
        wins.append(f"{method} beats persistence and climatology (RMSE) in {scored.count('yes')}/{len(scored)}")
    return ("Held-out skill (latitude-weighted RMSE and ACC, physical units)\n\n" + "\n".join(lines)
            + "\n\n" + "; ".join(wins) + " (variable, lead) pairs\n")
