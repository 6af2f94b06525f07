"""Task "streamflow": one of the streamflow model families (models.py) trained by the one trainer on
CAMELS-US basins or the synthetic basins, scored per basin (and per lead day) with the hydrology
metrics against persistence and day-of-year climatology, and with `eval.conceptual_baseline` against
the conceptual model calibrated per basin (conceptual.py; computed once per task, on every rank).

Protocols (`data.split`):
- "temporal": every basin; train / validation / test are the three disjoint periods of the config.
- "basins": k-fold over basins ("ungauged"): fold `data.fold` is the test basins, the next fold the
  validation basins, the rest train; the periods still apply (train basins in the training period,
  validation basins in the validation period, test basins in the test period). Ungauged basins have
  no past flow, so `data.past_flow` must be false.
Loss (`options.loss`): "mse" on normalised flow, or NeuralHydrology's basin-normalised NSE*
(Kratzert et al. 2019): ``mean_i (q^_i - q_i)^2 / (sigma_b(i) + 0.1)^2``, sigma_b the basin's
training-period std of normalised flow. Missing targets are left out of both.
Model selection: every evaluation reports `val_mean_loss`, the training loss of the (mean) network on a
fixed subset of validation windows, and with intervals each bound phase's own loss (`val_upper_loss`,
`val_lower_loss`); the configs select each phase's network on its own (`train.select_best:
val_{phase}_loss`; the single training phase is called "mean"). The trainer's periodic evaluations
(before a training run's last step) compute only these, so nothing is scored on the test period while
the checkpoint is being chosen; the last step's evaluation and `orbit evaluate` score validation and
test in full.
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
from orbit.train.task import Phase, Task

from . import intervals, report
from .basins import BasinSet, check_periods, parse_period
from .camels import read_camels_us
from .conceptual import check_drivers, check_settings, conceptual_baseline
from .models import ALL_FAMILIES, GRID_FAMILIES, GeoLSTM, Sizes, TemporalSequenceTransformer
from .scoring import climatology, score_split
from .synthetic import synthetic_basins
from .toy_basins import PATCH_FIELDS, check_patch, toy_earth_basins
from .windows import StreamflowBatch, WindowBatches, Windows

SOURCES = ("synthetic", "camels_us")
SPLITS = ("temporal", "basins")
WEATHER = ("stochastic", "toy_earth")
LOSSES = ("nse", "mse")
CAMELS_DRIVERS = ["prcp", "srad", "tmax", "tmin", "vp"]
CAMELS_STATIC = ["elev_mean", "slope_mean", "area_gages2", "frac_forest", "lai_max", "soil_depth_pelletier",
                 "soil_porosity", "max_water_content", "sand_frac", "clay_frac", "p_mean", "pet_mean", "aridity",
                 "frac_snow", "high_prec_freq", "low_prec_freq"]
NSE_EPS = 0.1


@dataclass
class StreamflowModelConfig:
    family: str = "lstm"  # one of models.ALL_FAMILIES
    hidden: int = 64  # LSTM state / transformer width / IMV-LSTM state per variable
    layers: int = 1
    dropout: float = 0.0
    heads: int = 4  # tst
    embed: int = 16  # geo_lstm static embedding

    def validate(self) -> None:
        if self.family not in ALL_FAMILIES:
            raise ValueError(f"family={self.family!r} is not a streamflow model family; valid: {sorted(ALL_FAMILIES)}")
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
    # synthetic: "stochastic" (synthetic.py's weather generator) or "toy_earth" (basins on land cells of
    # the toy Earth, driven by its fields on grid `toy_grid`; toy_basins.py); `patch`: toy_earth only, an odd
    # k adds a k x k patch of gridded prcp and t2m around each basin to the drivers (family rs_lstm)
    weather: str = "stochastic"
    toy_grid: list[int] = field(default_factory=lambda: [16, 32])
    patch: int = 0
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
        if self.weather not in WEATHER:
            raise ValueError(f"weather={self.weather!r} is not valid; use one of {list(WEATHER)}")
        if self.patch and (self.source != "synthetic" or self.weather != "toy_earth"):
            raise ValueError(f"data.patch={self.patch} needs gridded fields: set source=synthetic and "
                             f"weather=toy_earth")
        check_patch(self.patch, tuple(self.toy_grid))
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
    # the process-based baseline (conceptual.py): the conceptual model calibrated per basin on the
    # training period (differential evolution, `conceptual_generations` x `conceptual_popsize` x 9 runs
    # at most per basin; objective "nse" or "kge"; the first `conceptual_spinup` days of the record
    # are not scored); ungauged basins take the nearest training basin's parameters. Simulation only
    # (horizon 1); its data need the drivers prcp, tmax, tmin, srad
    conceptual_baseline: bool = False
    conceptual_objective: str = "nse"
    conceptual_generations: int = 40
    conceptual_popsize: int = 10
    conceptual_spinup: int = 365
    # model selection: the validation losses are computed on at most this many validation windows (evenly spaced over
    # the scored validation basins' samples), so a periodic evaluation costs little next to training
    select_samples: int = 4096

    def validate(self) -> None:
        if self.select_samples < 1:
            raise ValueError(f"eval.select_samples={self.select_samples} must be >= 1")
        check_settings(self.conceptual_objective, self.conceptual_generations, self.conceptual_popsize,
                       self.conceptual_spinup)


@dataclass
class StreamflowOptions:
    loss: str = "nse"
    intervals: bool = False  # PI3NN: train upper and lower networks after the mean (intervals.py)
    confidence: float = 0.9
    bound_steps: int = 0  # steps of each bound phase; 0 = train.max_steps
    bound_hidden: int = 0  # width of the bound networks; 0 = model.hidden

    def validate(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss={self.loss!r} is not valid; use one of {list(LOSSES)}")
        if not 0 < self.confidence < 1 or self.bound_steps < 0 or self.bound_hidden < 0:
            raise ValueError(f"need 0 < confidence < 1, bound_steps >= 0, bound_hidden >= 0; got {self.confidence}, "
                             f"{self.bound_steps}, {self.bound_hidden}")


def load_basins(d: StreamflowDataConfig) -> BasinSet:
    if d.source == "synthetic" and d.weather == "toy_earth":
        return toy_earth_basins(d.n_basins, d.first_year, d.last_year, d.warming, d.seed, tuple(d.toy_grid), d.patch)
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
        if (cfg.model.family in GRID_FAMILIES) != bool(d.patch):
            raise ValueError(f"family={cfg.model.family!r} with data.patch={d.patch}: families {sorted(GRID_FAMILIES)} "
                             f"need a patch (odd data.patch >= 1, data.weather=toy_earth) and the others take none "
                             f"(patch=0)")
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
        self.sizes = Sizes(len(self.data.driver_names), len(self.data.static_names), d.seq_len, d.horizon, d.patch,
                           len(PATCH_FIELDS) if d.patch else 0)
        if cfg.eval.conceptual_baseline and d.horizon != 1:
            raise ValueError(f"eval.conceptual_baseline simulates flow from observed drivers, a baseline for "
                             f"simulation (horizon 1); got data.horizon={d.horizon}: set it false for forecasts")
        if cfg.eval.conceptual_baseline:
            check_drivers(self.data.driver_names)
        select = cfg.train.select_best
        if cfg.options.intervals and select and "{phase}" not in select:
            raise ValueError(f"train.select_best={select!r} with options.intervals: the three networks need "
                             f"their own criterion each; use train.select_best=val_{{phase}}_loss")
        self.scores: dict[str, Any] = {}
        self.conceptual: tuple[dict[int, np.ndarray], dict[str, Any]] | None = None
        self._val_windows: StreamflowBatch | None = None  # see validation_windows

    def _network(self, hidden: int) -> nn.Module:
        m = self.cfg.model
        extra = {"heads": m.heads} if ALL_FAMILIES[m.family] is TemporalSequenceTransformer else \
            {"embed": m.embed} if issubclass(ALL_FAMILIES[m.family], GeoLSTM) else {}
        return ALL_FAMILIES[m.family](self.sizes, hidden=hidden, layers=m.layers, dropout=m.dropout, **extra)

    def build_model(self) -> nn.Module:
        o = self.cfg.options
        if not o.intervals:
            return self._network(self.cfg.model.hidden)
        bound = o.bound_hidden or self.cfg.model.hidden
        return intervals.IntervalForecaster(self._network(self.cfg.model.hidden), self._network(bound),
                                            self._network(bound))

    def phases(self, train_cfg) -> list[Phase]:
        if not self.cfg.options.intervals:
            return [Phase("mean", train_cfg.max_steps)]
        bound = self.cfg.options.bound_steps or train_cfg.max_steps
        return [Phase("mean", train_cfg.max_steps, ("mean",)),
                Phase("upper", bound, ("upper",), loss=lambda out, batch: intervals.one_sided_loss(out, batch.y, 1)),
                Phase("lower", bound, ("lower",), loss=lambda out, batch: intervals.one_sided_loss(out, batch.y, 2))]

    def train_batches(self, dp_rank: int, dp_size: int) -> WindowBatches:
        b, t0 = self.train_samples
        return WindowBatches(self.windows, b, t0, self.cfg.data.batch_size, self.cfg.train.seed, dp_rank, dp_size)

    def model_inputs(self, batch: StreamflowBatch) -> tuple:
        return batch.inputs()

    def loss(self, output: torch.Tensor, batch: StreamflowBatch) -> torch.Tensor:
        if self.cfg.options.intervals:
            output = output[:, 0]
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
        """{"rows", "t0" (n_t0,), "pred", "obs" (N_basin, n_t0, H) in mm/day} of a held-out split; with
        intervals also "fn", "u", "l", "qn": the PI3NN outputs and the target in normalised units."""
        rows = self.eval_rows(split)
        first, last = self.days[split]
        b, t0 = self.windows.samples(rows, first, last, require_target=False)
        out = []
        for start in range(0, len(b), self.cfg.eval.batch_size):
            stop = start + self.cfg.eval.batch_size
            batch = self.windows.batch(b[start:stop], t0[start:stop])
            out.append(engine.forward(batch.inputs()).float().cpu().numpy())
        out = np.concatenate(out).astype(np.float64)
        n_t0 = len(b) // len(rows)
        t0s = t0[:n_t0]
        leads = t0s[:, None] + np.arange(1, self.cfg.data.horizon + 1)
        shape = (len(rows), n_t0, self.cfg.data.horizon)
        result = {"rows": rows, "t0": t0s, "obs": self.data.flow[rows][:, leads]}
        if self.cfg.options.intervals:
            result.update(fn=out[:, 0].reshape(shape), u=out[:, 1].reshape(shape), l=out[:, 2].reshape(shape),
                          qn=self.windows.q[rows][:, leads].astype(np.float64))
            out = out[:, 0]
        result["pred"] = self.windows.physical(out.reshape(shape))
        return result

    def add_intervals(self, predictions: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
        """PI3NN step 4 on the validation period, then "lower"/"upper" (mm/day) into each split's
        predictions; returns the interval scores of both splits (intervals.py)."""
        val = predictions["val"]
        cals = intervals.calibrators(val["fn"], val["u"], val["l"], val["qn"])
        gamma = self.cfg.options.confidence
        scores: dict[str, Any] = {"confidence": gamma, "calibrated_on": "val",
                                  "alpha": [c.scales(gamma).alpha for c in cals],
                                  "beta": [c.scales(gamma).beta for c in cals]}
        for split, p in predictions.items():
            lower, upper = intervals.bounds(cals, p["fn"], p["u"], p["l"], gamma)
            p["lower"], p["upper"] = self.windows.physical(lower), self.windows.physical(upper)
            years = self.data.dates[p["t0"] + 1].astype("datetime64[Y]").astype(int) + 1970
            scores[split] = intervals.interval_scores(p["obs"], p["pred"], p["lower"], p["upper"], years)
        return scores

    def conceptual_flow(self) -> tuple[dict[int, np.ndarray], dict[str, Any]]:
        """The calibrated conceptual model's flow over the record for every scored basin, computed once
        per run (it depends on the training data only): ({row: (T,)}, its summary)."""
        if self.conceptual is None:
            e = self.cfg.eval
            rows = np.union1d(self.eval_rows("val"), self.eval_rows("test"))
            self.conceptual = conceptual_baseline(self.data, self.days["train"], self.rows["train"], rows,
                                                  self.cfg.data.split == "temporal", e.conceptual_objective,
                                                  e.conceptual_generations, e.conceptual_popsize,
                                                  e.conceptual_spinup, self.cfg.data.seed)
        return self.conceptual

    def validation_windows(self) -> StreamflowBatch:
        """The fixed validation windows of the validation losses: at most `eval.select_samples`, evenly spaced over
        the samples (observed targets only) of the scored validation basins in the validation period."""
        if self._val_windows is None:
            first, last = self.days["val"]
            b, t0 = self.windows.samples(self.eval_rows("val"), first, last, require_target=True)
            if len(b) == 0:
                raise ValueError(f"no validation sample: no scored validation basin has {self.cfg.data.horizon} "
                                 f"observed day(s) of flow in a row in {self.cfg.data.val_period}")
            keep = np.unique(np.linspace(0, len(b) - 1, min(len(b), self.cfg.eval.select_samples)).round()
                             .astype(int))
            self._val_windows = self.windows.batch(b[keep], t0[keep])
        return self._val_windows

    @torch.no_grad()
    def validation_losses(self, engine) -> dict[str, float]:
        """Each phase's own loss on `validation_windows` (for `train.select_best: val_{phase}_loss`):
        `val_mean_loss` (the run's loss of the mean network), with intervals also `val_upper_loss` and
        `val_lower_loss` (intervals.one_sided_loss)."""
        batch, size = self.validation_windows(), self.cfg.eval.batch_size
        inputs = batch.inputs()
        out = torch.cat([engine.forward(tuple(x[i:i + size] for x in inputs)).float().cpu()
                         for i in range(0, len(batch.y), size)])
        losses = {"val_mean_loss": float(self.loss(out, batch))}
        if self.cfg.options.intervals:
            losses.update(val_upper_loss=float(intervals.one_sided_loss(out, batch.y, 1)),
                          val_lower_loss=float(intervals.one_sided_loss(out, batch.y, 2)))
        return losses

    def validate(self, engine, step: int) -> dict[str, Any]:
        """What training looks at (periodic evaluations, checkpoint selection): the validation losses only."""
        return {"scalars": self.validation_losses(engine)}

    def evaluate(self, engine, step: int) -> dict[str, Any]:
        """The validation losses and the full validation and test scores (module docstring)."""
        out: dict[str, Any] = {"scalars": self.validation_losses(engine), "median": {}, "per_basin": {}}
        for split in ("val", "test"):
            p = self.predict(engine, split)
            self.scores[split] = p
            references = {}
            if self.cfg.eval.conceptual_baseline:
                sims, out["conceptual"] = self.conceptual_flow()
                p["conceptual"] = np.stack([sims[r][p["t0"] + 1] for r in p["rows"]])[..., None]
                references["conceptual"] = p["conceptual"]
            median, per_basin = score_split(self.cfg.model.family, p, self.data, self.days["train"], self.rows["train"],
                                            gauged=self.cfg.data.split == "temporal", references=references)
            out["median"][split], out["per_basin"][split] = median, per_basin
            for model, metrics in median.items():
                prefix = f"{split}_" if model == self.cfg.model.family else f"{model}_{split}_"
                scalars = {f"{prefix}nse": metrics["nse"][0], f"{prefix}kge": metrics["kge"][0]}
                if self.cfg.data.horizon > 1:
                    scalars[f"{prefix}nse_lead{self.cfg.data.horizon}"] = metrics["nse"][-1]
                out["scalars"].update({k: v for k, v in scalars.items() if v is not None})
        if self.cfg.options.intervals:
            out["intervals"] = self.add_intervals(self.scores)
            for split in ("val", "test"):
                out["scalars"][f"{split}_picp"] = out["intervals"][split]["picp"]
                out["scalars"][f"{split}_interval_width"] = out["intervals"][split]["width"]
        out["protocol"] = {"split": self.cfg.data.split, "periods": {k: [str(a), str(b)] for k, (a, b) in
                                                                      self.periods.items()},
                           "basins": {k: [self.data.basins[i] for i in v] for k, v in self.rows.items()}}
        return out

    def report(self, summary: dict[str, Any], run_dir: Path) -> None:
        report.write_report(summary, run_dir, self.cfg.model.family, self.cfg.data.horizon)
        if "test" in self.scores:
            p = self.scores["test"]
            report.plot_hydrograph(p, self.data.dates, self.data.basins[p["rows"][0]], 0,
                                   Path(run_dir, "streamflow_hydrograph.png"))

    def predictions(self, engine) -> Any:
        import xarray as xr

        if "test" not in self.scores:
            self.evaluate(engine, 0)
        p = self.scores["test"]
        clim = climatology(self.data, self.days["train"], self.rows["train"], p["rows"], p["t0"], self.cfg.data.horizon,
                           gauged=self.cfg.data.split == "temporal")
        persistence = self.data.flow[p["rows"]][:, p["t0"]][..., None].repeat(self.cfg.data.horizon, axis=-1)
        dims = ("basin", "time", "lead")
        return xr.Dataset(
            {"q_pred": (dims, p["pred"]), "q_obs": (dims, p["obs"]), "q_persistence": (dims, persistence),
             "q_climatology": (dims, clim),
             **({"q_conceptual": (dims, p["conceptual"])} if "conceptual" in p else {}),
             **({"q_lower": (dims, p["lower"]), "q_upper": (dims, p["upper"])} if "lower" in p else {})},
            coords={"basin": [self.data.basins[i] for i in p["rows"]], "time": self.data.dates[p["t0"]],
                    "lead": np.arange(1, self.cfg.data.horizon + 1)},
            attrs={"description": "test-period flow forecasts in mm/day; time = issue day, the target day is "
                                  "time + lead days", "model": self.cfg.model.family})

