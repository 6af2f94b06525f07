"""Task "dbuq": amortized posterior sampling for model calibration (DBUQ), trained by the one trainer.

1. Labels without a score network (`labels.py`): for n_labels pairs (y0, z), the end point of the
   reverse probability-flow ODE whose score is computed in closed form from the training runs.
2. The network F([y, z]) -> x (`model.DBUQNet`) is fitted to those labels by MSE (one trainer phase).
3. Sampling for any observation y*: F([y*, z_k]), z_k ~ N(0, I) (`posterior.py`).
Evaluation: synthetic-truth cases (validation and the held-out test runs), observations = simulated
outputs + one N(0, sigma^2) draw; coverage of the true parameters by the 50/90% central intervals,
SBC rank uniformity (chi-square p-value per parameter, `orbit.metrics.calibration`), RMSE of the posterior
mean relative to the prior std; on `linear_gaussian` also the error against the analytic posterior.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from orbit.config import DataConfig, EvalConfig, RunConfig
from orbit.data.sampler import RowBatches
from orbit.metrics import calibration as cal
from orbit.registry import register_task
from orbit.train.task import Task

from .labels import make_labels
from .model import DBUQNet
from .posterior import Normalizer, sample_posterior
from .problems import PROBLEMS, load_problem, observations_with_noise


@dataclass
class DBUQModelConfig:
    hidden: list[int] = field(default_factory=lambda: [256, 256, 256])


@dataclass
class DBUQDataConfig(DataConfig):
    problem: str = "elm_ozark"  # elm_ozark | linear_gaussian | nonlinear
    data_dir: str | None = None  # elm_ozark: directory of InputPara.npy / Observations.npy; None: shared data
    n_runs: int = 1000  # synthetic problems: ensemble size
    noise_sigma: list[float] = field(default_factory=lambda: [1.0])  # obs noise std per output (or one), physical
    val_fraction: float = 0.1
    holdout_fraction: float = 0.1  # the last runs: synthetic-truth test cases, never trained on
    seed: int = 0  # synthetic problems and the noise of the synthetic-truth observations
    batch_size: int = 512

    def validate(self) -> None:
        if self.problem not in PROBLEMS:
            raise ValueError(f"data.problem={self.problem!r} is not one of {list(PROBLEMS)}")
        if not (0 <= self.val_fraction < 1 and 0 < self.holdout_fraction < 1
                and self.val_fraction + self.holdout_fraction < 1):
            raise ValueError(f"need 0 <= val_fraction, 0 < holdout_fraction and a sum < 1; got {self.val_fraction}, "
                             f"{self.holdout_fraction}")
        if self.n_runs < 20:
            raise ValueError(f"data.n_runs={self.n_runs} must be >= 20")


@dataclass
class DBUQEvalConfig(EvalConfig):
    batch_size: int = 4096
    n_samples: int = 1000  # posterior samples per synthetic-truth observation
    levels: list[float] = field(default_factory=lambda: [0.5, 0.9])


@dataclass
class DBUQOptions:
    n_labels: int = 50000  # (y0, z) -> x training pairs
    ode_steps: int = 50  # Euler-exponential steps of the probability-flow ODE from t = 1 to 0
    kernel_width: float = 0.0  # extra likelihood-kernel width h, normalized output units (0: noise only)
    ode_t_end: float = 0.0  # > 0: stop the ODE early, labels blurred by N(0, t_end / (1 - t_end)^2) (labels.py)
    label_seed: int = 0
    logit_box: bool = True  # uniform priors: learn and sample in logit space, every sample inside the box

    def validate(self) -> None:
        if self.n_labels < 1 or self.ode_steps < 1 or self.kernel_width < 0 or not 0 <= self.ode_t_end < 1:
            raise ValueError(f"need n_labels >= 1, ode_steps >= 1, kernel_width >= 0, 0 <= ode_t_end < 1; got "
                             f"{self.n_labels}, {self.ode_steps}, {self.kernel_width}, {self.ode_t_end}")


def build_problem(cfg: RunConfig, options: DBUQOptions):
    """The problem, its (train, val, test) runs and the normalizer of the training runs."""
    d = cfg.data
    problem = load_problem(d.problem, data_dir=d.data_dir, n_runs=d.n_runs, sigma=list(d.noise_sigma), seed=d.seed)
    split = problem.split(d.val_fraction, d.holdout_fraction)
    return problem, split, Normalizer(problem, split[0], options.logit_box)


@register_task("dbuq", model=DBUQModelConfig, data=DBUQDataConfig, eval=DBUQEvalConfig, options=DBUQOptions)
class DBUQTask(Task):
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.options: DBUQOptions = cfg.options if cfg.options is not None else DBUQOptions()
        self.problem, (self.train_rows, self.val_rows, self.test_rows), self.norm = build_problem(cfg, self.options)
        self.label_seconds: float | None = None
        self._test: dict[str, np.ndarray] | None = None

    def build_model(self) -> nn.Module:
        return DBUQNet(self.problem.y.shape[1], self.problem.x.shape[1], list(self.cfg.model.hidden))

    def labels(self) -> tuple[np.ndarray, np.ndarray]:
        """(inputs [y0, z] (L, K + D), labels (L, D)), generated once per task (seeded, so every rank and
        every resume makes the same)."""
        o, n = self.options, self.norm
        start = time.perf_counter()
        y0, z, x = make_labels(n.xn(self.problem.x[self.train_rows]), n.yn(self.problem.y[self.train_rows]), n.noise,
                               o.kernel_width, o.n_labels, o.ode_steps, o.label_seed, o.ode_t_end)
        self.label_seconds = time.perf_counter() - start
        return np.concatenate([y0, z], axis=1), x

    def train_batches(self, dp_rank: int, dp_size: int) -> RowBatches:
        inputs, labels = self.labels()
        return RowBatches(inputs, labels, np.arange(len(labels)), self.cfg.data.batch_size, self.cfg.train.seed,
                          dp_rank, dp_size)

    def model_inputs(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.problem.y.shape[1]
        return batch[0][:, :k], batch[0][:, k:]

    def loss(self, output: torch.Tensor, batch) -> torch.Tensor:
        return nn.functional.mse_loss(output.float(), batch[1])

    # ------------------------------------------------------------------ evaluation
    def posterior(self, engine, y_obs: np.ndarray, n_samples: int | None = None, seed: int = 0) -> np.ndarray:
        return sample_posterior(lambda y, z: engine.forward((y, z)), self.norm, y_obs,
                                n_samples or self.cfg.eval.n_samples, seed, self.cfg.eval.batch_size * 64)

    def score(self, samples: np.ndarray, truth: np.ndarray, y_obs: np.ndarray) -> dict[str, float]:
        e, p = self.cfg.eval, self.problem
        out: dict[str, float] = {}
        for level in e.levels:
            out[f"coverage_{round(level * 100)}"] = float(cal.interval_coverage(samples, truth, level).mean())
        pvalues = cal.rank_uniformity_pvalues(cal.sbc_ranks(samples, truth), samples.shape[1])
        out["sbc_min_pvalue"] = float(pvalues.min())
        prior_std = p.x[self.train_rows].std(0)
        out["mean_rmse_over_prior_std"] = float(np.sqrt((((samples.mean(1) - truth) / prior_std) ** 2).mean()))
        out["std_over_prior_std"] = float((samples.std(1) / prior_std).mean())
        if p.linear:
            mean, cov = p.analytic_posterior(y_obs)
            errors = cal.gaussian_posterior_errors(samples, mean, np.sqrt(np.diag(cov)))
            out["analytic_mean_error"] = float(errors["mean_error"].mean())
            out["analytic_std_ratio"] = float(errors["std_ratio"].mean())
        return out

    def evaluate(self, engine, step: int) -> dict[str, Any]:
        scalars: dict[str, float] = {}
        for part, rows in (("val", self.val_rows), ("test", self.test_rows)):
            if not len(rows):
                continue
            y_obs = observations_with_noise(self.problem, rows, self.cfg.data.seed)
            samples = self.posterior(engine, y_obs)
            scalars.update({f"{part}_{k}": v for k, v in self.score(samples, self.problem.x[rows], y_obs).items()})
            if part == "test":
                self._test = {"rows": rows, "y_obs": y_obs, **cal.summarize(samples)}
        if self.label_seconds is not None:
            scalars["label_seconds"] = self.label_seconds
        return {"scalars": scalars, "problem": self.problem.name, "parameters": list(self.problem.parameters),
                "runs": {"train": len(self.train_rows), "val": len(self.val_rows), "test": len(self.test_rows)}}

    def report(self, summary: dict[str, Any], run_dir: Path) -> None:
        sc, levels = summary["scalars"], self.cfg.eval.levels
        cols = [f"coverage_{round(q * 100)}" for q in levels] + ["sbc_min_pvalue", "mean_rmse_over_prior_std",
                                                                  "std_over_prior_std"]
        if self.problem.linear:
            cols += ["analytic_mean_error", "analytic_std_ratio"]
        lines = [f"DBUQ on {self.problem.name}, step {summary.get('step')}; runs train/val/test "
                 f"{summary['runs']['train']}/{summary['runs']['val']}/{summary['runs']['test']}; "
                 f"{self.cfg.eval.n_samples} samples per observation; noise sigma {self.problem.sigma.tolist()}", "",
                 "| part | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for part in ("val", "test"):
            if f"{part}_{cols[0]}" in sc:
                lines.append(f"| {part} | " + " | ".join(f"{sc[f'{part}_{c}']:.3f}" for c in cols) + " |")
        text = "\n".join(lines)
        print(text)
        Path(run_dir, "dbuq_report.md").write_text(text + "\n")
        Path(run_dir, "dbuq_problem.json").write_text(json.dumps(
            {"parameters": list(self.problem.parameters), "outputs": list(self.problem.outputs),
             "noise_sigma": self.problem.sigma.tolist()}, indent=1))

    def predictions(self, engine) -> Any:
        import xarray as xr

        if self._test is None:
            self.evaluate(engine, 0)
        t = self._test
        dims = ("case", "parameter")
        data = {name: (dims, t[name]) for name in ("mean", "std", "q05", "q95")}
        data["truth"] = (dims, self.problem.x[t["rows"]])
        data["observation"] = (("case", "output"), t["y_obs"])
        return xr.Dataset(data, coords={"case": t["rows"].astype(np.int64), "parameter": list(self.problem.parameters),
                                        "output": list(self.problem.outputs)},
                          attrs={"description": "DBUQ posterior summaries of the held-out synthetic-truth runs, "
                                                "physical units"})
