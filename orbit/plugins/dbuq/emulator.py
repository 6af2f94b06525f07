"""Task "land_emulator": a fast emulator parameters -> outputs from ensemble runs, optionally with output
dimension reduction, trained by the one trainer; it is also the surrogate of the MCMC baseline.

Output reduction (`model.reduce: pca`): with the training outputs Y (N, K) standardized per output,
Y_c = Y - mean = U S V^T (SVD); keep the first R rows of V^T whose cumulative explained variance
S_r^2 / sum S^2 reaches `model.explained_variance`; the network predicts R scores s(x) and the output is
mean + s(x) V_R^T (a fixed decoder, `model.Emulator`). `reduce: none` predicts all K outputs directly.
Both variants use the same loss (MSE on the standardized outputs) and the same runs, so a learning curve
(held-out R^2 and relative RMSE against the number of training runs) isolates the effect of the reduction.
Relative RMSE = sqrt(mean (y - yhat)^2) / std(y) over the held-out runs, averaged over outputs.

Problems: those of `problems.py` (elm_ozark: 5 outputs) and `toy_gpp`, the toy land model's GPP ensemble
(`gpp_ensemble.py`, `data.path`: 8 parameters -> 41,370 annual GPP values), where the reduction matters.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from orbit.config import DataConfig, RunConfig
from orbit.data.sampler import RowBatches
from orbit.metrics.emulator import r2_score
from orbit.registry import register_task
from orbit.train.task import Task

from .gpp_ensemble import load_toy_gpp
from .model import Emulator
from .problems import PROBLEMS, Problem, load_problem

REDUCTIONS = ("pca", "none")
EMULATOR_PROBLEMS = (*PROBLEMS, "toy_gpp")


@dataclass
class EmulatorModelConfig:
    hidden: list[int] = field(default_factory=lambda: [128, 128])
    reduce: str = "pca"  # pca | none
    explained_variance: float = 0.999  # pca: components kept until this fraction of variance

    def validate(self) -> None:
        if self.reduce not in REDUCTIONS:
            raise ValueError(f"model.reduce={self.reduce!r} is not one of {list(REDUCTIONS)}")
        if not 0 < self.explained_variance <= 1:
            raise ValueError(f"model.explained_variance={self.explained_variance} must be in (0, 1]")


@dataclass
class EmulatorDataConfig(DataConfig):
    problem: str = "elm_ozark"  # elm_ozark | linear_gaussian | nonlinear | toy_gpp
    data_dir: str | None = None
    path: str | None = None  # toy_gpp: the store of `orbit dbuq ensemble --out PATH`
    n_runs: int = 1000  # synthetic problems
    n_train: int = 0  # use only the first n_train training runs (learning curves); 0: all
    subset_seed: int = -1  # >= 0: a random n_train of the training runs (this seed) instead of the first
    val_fraction: float = 0.1
    holdout_fraction: float = 0.1  # the same split as task "dbuq": the same training runs
    seed: int = 0
    batch_size: int = 64

    def validate(self) -> None:
        if self.problem not in EMULATOR_PROBLEMS:
            raise ValueError(f"data.problem={self.problem!r} is not one of {list(EMULATOR_PROBLEMS)}")
        if self.n_train < 0:
            raise ValueError(f"data.n_train={self.n_train} must be >= 0 (0: all training runs)")


class Standardizer:
    """Training-run mean/std of parameters and outputs."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x_mean, self.x_std = x.mean(0), np.where(x.std(0) > 0, x.std(0), 1.0)
        self.y_mean, self.y_std = y.mean(0), np.where(y.std(0) > 0, y.std(0), 1.0)


def pca_decoder(yn: np.ndarray, explained: float) -> tuple[np.ndarray, np.ndarray]:
    """(components (R, K), center (K,)) of standardized training outputs, R the fewest components that
    explain `explained` of the variance (at most N - 1)."""
    center = yn.mean(0)
    _, s, vt = np.linalg.svd(yn - center, full_matrices=False)
    fraction = np.cumsum(s ** 2) / np.sum(s ** 2)
    r = int(min(np.searchsorted(fraction, explained - 1e-12) + 1, len(s)))
    return vt[:r], center


@register_task("land_emulator", model=EmulatorModelConfig, data=EmulatorDataConfig)
class EmulatorTask(Task):
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        d = cfg.data
        self.problem: Problem = load_toy_gpp(d.path, 1.0) if d.problem == "toy_gpp" else \
            load_problem(d.problem, data_dir=d.data_dir, n_runs=d.n_runs, sigma=1.0, seed=d.seed)
        train, self.val_rows, self.test_rows = self.problem.split(d.val_fraction, d.holdout_fraction)
        if d.n_train > len(train):
            raise ValueError(f"data.n_train={d.n_train} exceeds the {len(train)} training runs")
        if d.n_train and d.subset_seed >= 0:
            train = np.sort(np.random.default_rng([d.subset_seed, 404]).permutation(train)[:d.n_train])
        self.train_rows = train[:d.n_train] if d.n_train else train
        p = self.problem
        self.std = Standardizer(p.x[self.train_rows], p.y[self.train_rows])
        self.xn = ((p.x - self.std.x_mean) / self.std.x_std).astype(np.float32)
        self.yn = ((p.y - self.std.y_mean) / self.std.y_std).astype(np.float32)
        self.decoder = pca_decoder(self.yn[self.train_rows].astype(np.float64), cfg.model.explained_variance) \
            if cfg.model.reduce == "pca" else None

    def build_model(self) -> nn.Module:
        m, k = self.cfg.model, self.problem.y.shape[1]
        model = Emulator(self.problem.x.shape[1], k, list(m.hidden), 0 if self.decoder is None else len(self.decoder[0]))
        if self.decoder is not None:
            model.set_decoder(torch.as_tensor(self.decoder[0], dtype=torch.float32),
                              torch.as_tensor(self.decoder[1], dtype=torch.float32))
        return model

    def train_batches(self, dp_rank: int, dp_size: int) -> RowBatches:
        return RowBatches(self.xn, self.yn, self.train_rows, min(self.cfg.data.batch_size, len(self.train_rows)),
                          self.cfg.train.seed, dp_rank, dp_size)

    def model_inputs(self, batch) -> tuple[torch.Tensor]:
        return (batch[0],)

    def loss(self, output: torch.Tensor, batch) -> torch.Tensor:
        return nn.functional.mse_loss(output.float(), batch[1])

    def predict(self, forward, x: np.ndarray) -> np.ndarray:
        """Outputs in physical units for parameters x (N, D) in physical units."""
        xn = torch.as_tensor((x - self.std.x_mean) / self.std.x_std, dtype=torch.float32)
        with torch.no_grad():
            out = np.concatenate([forward(xn[i:i + 65536]).float().cpu().numpy() for i in range(0, len(xn), 65536)])
        return out.astype(np.float64) * self.std.y_std + self.std.y_mean

    def _scores(self, engine, parts: dict[str, np.ndarray]) -> dict[str, float]:
        p, scalars = self.problem, {}
        for part, rows in parts.items():
            pred = self.predict(lambda x: engine.forward((x,)), p.x[rows])
            true = p.y[rows]
            scalars[f"{part}_r2"] = float(np.nanmean(r2_score(pred, true)))
            scalars[f"{part}_rel_rmse"] = float(np.mean(np.sqrt(((pred - true) ** 2).mean(0)) / true.std(0)))
        return scalars

    def validate(self, engine, step: int) -> dict[str, Any]:
        """What training (checkpoint selection) looks at: validation runs only."""
        return {"scalars": self._scores(engine, {"val": self.val_rows})}

    def evaluate(self, engine, step: int) -> dict[str, Any]:
        p, scalars = self.problem, self._scores(engine, {"val": self.val_rows, "test": self.test_rows})
        scalars["components"] = float(len(self.decoder[0]) if self.decoder is not None else p.y.shape[1])
        return {"scalars": scalars, "runs": {"train": len(self.train_rows), "val": len(self.val_rows),
                                             "test": len(self.test_rows)}}

    def report(self, summary: dict[str, Any], run_dir: Path) -> None:
        sc, m = summary["scalars"], self.cfg.model
        text = (f"land emulator ({m.reduce}, {int(sc['components'])} of {self.problem.y.shape[1]} outputs' "
                f"components) on {self.problem.name}, {summary['runs']['train']} training runs: val R2 "
                f"{sc['val_r2']:.4f}, relative RMSE {sc['val_rel_rmse']:.4f}; test R2 {sc['test_r2']:.4f}, relative "
                f"RMSE {sc['test_rel_rmse']:.4f}")
        print(text)
        Path(run_dir, "emulator_report.md").write_text(text + "\n")
