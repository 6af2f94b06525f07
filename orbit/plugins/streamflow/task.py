"""Task "streamflow": one of the streamflow model families (models.py) trained by the one trainer on
CAMELS-US basins or the synthetic basins, scored per basin (and per lead day) with the hydrology
metrics against persistence and day-of-year climatology.

Protocols (`data.split`):
- "temporal": every basin; train / validation / test are the three disjoint periods of the config.
- "basins": k-fold over basins ("ungauged"): fold `data.fold` is the test basins, the next fold the
  validation basins, the rest train; the periods still apply (train basins in the training period,
  validation basins in the validation period, test basins in the test period). Ungauged basins have
  no past flow, so `data.past_flow` must be false.
Loss (`options.loss`): "mse" on normalised flow, or NeuralHydrology's basin-normalised NSE*
(Kratzert et al. 2019): ``mean_i (q^_i - q_i)^2 / (sigma_b(i) + 0.1)^2``, sigma_b the basin's
training-period std of normalised flow. Missing targets are left out of both.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from orbit.config import DataConfig, EvalConfig, RunConfig
from orbit.registry import register_task
from orbit.train.task import Task

from . import report
from .basins import BasinSet, check_periods, parse_period
from .camels import read_camels_us
from .models import FAMILIES, GeoLSTM, Sizes, TemporalSequenceTransformer
from .scoring import climatology, score_split
from .synthetic import synthetic_basins
from .windows import StreamflowBatch, WindowBatches, Windows

SOURCES = ("synthetic", "camels_us")
SPLITS = ("temporal", "basins")
LOSSES = ("nse", "mse")
CAMELS_DRIVERS = ["prcp", "srad", "tmax", "tmin", "vp"]
CAMELS_STATIC = ["elev_mean", "slope_mean", "area_gages2", "frac_forest", "lai_max", "soil_depth_pelletier",
                 "soil_porosity", "max_water_content", "sand_frac", "clay_frac", "p_mean", "pet_mean", "aridity",
                 "frac_snow", "high_prec_freq", "low_prec_freq"]
NSE_EPS = 0.1


@dataclass
class StreamflowModelConfig:
    family: str = "lstm"  # one of models.FAMILIES
    hidden: int = 64  # LSTM state / transformer width / IMV-LSTM state per variable
    layers: int = 1
    dropout: float = 0.0
    heads: int = 4  # tst
    embed: int = 16  # geo_lstm static embedding

    def validate(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family={self.family!r} is not a streamflow model family; valid: {sorted(FAMILIES)}")
        if self.hidden < 1 or self.layers < 1 or self.heads < 1 or self.embed < 1 or not 0 <= self.dropout < 1:
            raise ValueError(f"need hidden, layers, heads, embed >= 1 and dropout in [0, 1); got {self.hidden}, "
                             f"{self.layers}, {self.heads}, {self.embed}, {self.dropout}")


@dataclass
class StreamflowDataConfig(DataConfig):
    source: str = "synthetic"  # or camels_us
    root: str = "../shared/data/camels_us"  # camels_us: a CAMELS-US directory
    basins: list[str] = field(default_factory=list)  # camels_us: gauge ids (required)
    forcing: str = "daymet"
    drivers: list[str] = field(default_factory=list)  # camels_us: forcing columns ([] = prcp srad tmax tmin vp)
    static: list[str] = field(default_factory=list)  # camels_us: attribute names ([] = CAMELS_STATIC)
    n_basins: int = 100  # synthetic
    first_year: int = 1980
    last_year: int = 2009
    warming: float = 0.03  # synthetic: degC per year
    seed: int = 0  # synthetic data, basin folds, forecast errors
    # [first, last] inclusive; YAML may give dates unquoted (read as dates, kept as ISO strings)
    train_period: list[Any] = field(default_factory=lambda: ["1981-01-01", "1995-12-31"])
    val_period: list[Any] = field(default_factory=lambda: ["1996-01-01", "2000-12-31"])
    test_period: list[Any] = field(default_factory=lambda: ["2001-01-01", "2009-12-31"])
    split: str = "temporal"
    folds: int = 5
    fold: int = 0
    seq_len: int = 90
    horizon: int = 1
    past_flow: bool = False
    forecast_error: float = 0.0  # std of the driver forecast error at lead 1 (normalised units), grows as sqrt(lead)
    batch_size: int = 64

    def validate(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source={self.source!r} is not valid; use one of {list(SOURCES)}")
        if self.source == "camels_us" and not self.basins:
            raise ValueError("source=camels_us needs data.basins (CAMELS gauge ids, e.g. ['01022500'])")
        if self.split not in SPLITS:
            raise ValueError(f"split={self.split!r} is not valid; use one of {list(SPLITS)}")
        if self.split == "basins" and self.past_flow:
            raise ValueError("split=basins scores ungauged basins, which have no past flow: set past_flow=false")
        if self.split == "basins" and not (3 <= self.folds and 0 <= self.fold < self.folds):
            raise ValueError(f"split=basins needs folds >= 3 and 0 <= fold < folds; got folds={self.folds}, "
                             f"fold={self.fold}")
        if self.seq_len < 1 or not 1 <= self.horizon <= 30 or self.forecast_error < 0 or self.n_basins < 1:
            raise ValueError(f"need seq_len >= 1, 1 <= horizon <= 30, forecast_error >= 0, n_basins >= 1; got "
                             f"{self.seq_len}, {self.horizon}, {self.forecast_error}, {self.n_basins}")
        for name in ("train", "val", "test"):
            setattr(self, f"{name}_period", [str(p) for p in getattr(self, f"{name}_period")])
            parse_period(getattr(self, f"{name}_period"), f"{name}_period")


@dataclass
class StreamflowEvalConfig(EvalConfig):
    batch_size: int = 1024
    max_basins: int = 0  # score at most this many basins per split (evenly spaced); 0 = all


@dataclass
class StreamflowOptions:
    loss: str = "nse"

    def validate(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss={self.loss!r} is not valid; use one of {list(LOSSES)}")


def load_basins(d: StreamflowDataConfig) -> BasinSet:
    if d.source == "synthetic":
        return synthetic_basins(d.n_basins, d.first_year, d.last_year, d.warming, d.seed)
    return read_camels_us(d.root, list(d.basins), list(d.drivers) or CAMELS_DRIVERS, list(d.static) or CAMELS_STATIC,
                          d.forcing)


def split_basins(n: int, d: StreamflowDataConfig) -> dict[str, np.ndarray]:
    """Basin rows of train / val / test (see the module docstring)."""
    if d.split == "temporal":
        every = np.arange(n)
        return {"train": every, "val": every, "test": every}
    if n < d.folds:
        raise ValueError(f"split=basins with folds={d.folds} needs at least {d.folds} basins, got {n}")
    folds = np.array_split(np.random.default_rng([d.seed, 17]).permutation(n), d.folds)
    test, val = folds[d.fold], folds[(d.fold + 1) % d.folds]
    train = np.setdiff1d(np.arange(n), np.concatenate([test, val]))
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


@register_task("streamflow", model=StreamflowModelConfig, data=StreamflowDataConfig, eval=StreamflowEvalConfig,
               options=StreamflowOptions)
class StreamflowTask(Task):
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        d = cfg.data
        self.data = load_basins(d)
        self.periods = {name: parse_period(getattr(d, f"{name}_period"), f"{name}_period")
                        for name in ("train", "val", "test")}
        check_periods(self.data, self.periods, d.seq_len, d.horizon)
        self.rows = split_basins(len(self.data.basins), d)
        self.days = {name: (self.data.day_index(a), self.data.day_index(b)) for name, (a, b) in self.periods.items()}
        first, last = self.days["train"]
        self.windows = Windows(self.data, d.seq_len, d.horizon, d.past_flow, d.forecast_error, self.rows["train"],
                               slice(first, last + 1), d.seed)
        self.train_samples = self.windows.samples(self.rows["train"], first, last, require_target=True)
        if len(self.train_samples[0]) == 0:
            raise ValueError(f"no training sample: no basin has {d.horizon} observed day(s) of flow in a row in the "
                             f"training period {d.train_period}")
        self.sizes = Sizes(len(self.data.driver_names), len(self.data.static_names), d.seq_len, d.horizon)
        self.scores: dict[str, Any] = {}

    def build_model(self) -> nn.Module:
        m = self.cfg.model
        extra = {"heads": m.heads} if FAMILIES[m.family] is TemporalSequenceTransformer else \
            {"embed": m.embed} if FAMILIES[m.family] is GeoLSTM else {}
        return FAMILIES[m.family](self.sizes, hidden=m.hidden, layers=m.layers, dropout=m.dropout, **extra)

    def train_batches(self, dp_rank: int, dp_size: int) -> WindowBatches:
        b, t0 = self.train_samples
        return WindowBatches(self.windows, b, t0, self.cfg.data.batch_size, self.cfg.train.seed, dp_rank, dp_size)

    def model_inputs(self, batch: StreamflowBatch) -> tuple:
        return batch.inputs()

    def loss(self, output: torch.Tensor, batch: StreamflowBatch) -> torch.Tensor:
        seen = torch.isfinite(batch.y)
        error = (output.float() - torch.nan_to_num(batch.y)) ** 2
        if self.cfg.options.loss == "nse":
            error = error / (batch.basin_std + NSE_EPS) ** 2
        return (error * seen).sum() / seen.sum().clamp(min=1)

    # ------------------------------------------------------------------ evaluation
    def eval_rows(self, split: str) -> np.ndarray:
        rows, limit = self.rows[split], self.cfg.eval.max_basins
        if limit and len(rows) > limit:
            rows = rows[np.linspace(0, len(rows) - 1, limit).round().astype(int)]
        return rows

    def predict(self, engine, split: str) -> dict[str, np.ndarray]:
        """{"rows", "t0" (n_t0,), "pred", "obs" (N_basin, n_t0, H) in mm/day} of a held-out split."""
        rows = self.eval_rows(split)
        first, last = self.days[split]
        b, t0 = self.windows.samples(rows, first, last, require_target=False)
        out = []
        for start in range(0, len(b), self.cfg.eval.batch_size):
            batch = self.windows.batch(b[start:start + self.cfg.eval.batch_size], t0[start:start + self.cfg.eval.batch_size])
            out.append(engine.forward(batch.inputs()).float().cpu().numpy())
        shape = (len(rows), -1, self.cfg.data.horizon)
        pred = self.windows.physical(np.concatenate(out).astype(np.float64)).reshape(shape)
        n_t0 = pred.shape[1]
        t0s = t0[:n_t0]
        leads = t0s[:, None] + np.arange(1, self.cfg.data.horizon + 1)
        return {"rows": rows, "t0": t0s, "pred": pred, "obs": self.data.flow[rows][:, leads]}

    def evaluate(self, engine, step: int) -> dict[str, Any]:
        out: dict[str, Any] = {"scalars": {}, "median": {}, "per_basin": {}}
        for split in ("val", "test"):
            p = self.predict(engine, split)
            self.scores[split] = p
            median, per_basin = score_split(self.cfg.model.family, p, self.data, self.days["train"], self.rows["train"],
                                            gauged=self.cfg.data.split == "temporal")
            out["median"][split], out["per_basin"][split] = median, per_basin
            for model, metrics in median.items():
                prefix = f"{split}_" if model == self.cfg.model.family else f"{model}_{split}_"
                scalars = {f"{prefix}nse": metrics["nse"][0], f"{prefix}kge": metrics["kge"][0]}
                if self.cfg.data.horizon > 1:
                    scalars[f"{prefix}nse_lead{self.cfg.data.horizon}"] = metrics["nse"][-1]
                out["scalars"].update({k: v for k, v in scalars.items() if v is not None})
        out["protocol"] = {"split": self.cfg.data.split, "periods": {k: [str(a), str(b)] for k, (a, b) in
                                                                      self.periods.items()},
                           "basins": {k: [self.data.basins[i] for i in v] for k, v in self.rows.items()}}
        return out

    def report(self, summary: dict[str, Any], run_dir: Path) -> None:
        report.write_report(summary, run_dir, self.cfg.model.family, self.cfg.data.horizon)

    def predictions(self, engine) -> Any:
        import xarray as xr

        p = self.scores.get("test") or self.predict(engine, "test")
        clim = climatology(self.data, self.days["train"], self.rows["train"], p["rows"], p["t0"], self.cfg.data.horizon,
                           gauged=self.cfg.data.split == "temporal")
        persistence = self.data.flow[p["rows"]][:, p["t0"]][..., None].repeat(self.cfg.data.horizon, axis=-1)
        dims = ("basin", "time", "lead")
        return xr.Dataset(
            {"q_pred": (dims, p["pred"]), "q_obs": (dims, p["obs"]), "q_persistence": (dims, persistence),
             "q_climatology": (dims, clim)},
            coords={"basin": [self.data.basins[i] for i in p["rows"]], "time": self.data.dates[p["t0"]],
                    "lead": np.arange(1, self.cfg.data.horizon + 1)},
            attrs={"description": "test-period flow forecasts in mm/day; time = issue day, the target day is "
                                  "time + lead days", "model": self.cfg.model.family})

