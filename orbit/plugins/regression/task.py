"""Task "regression": an MLP fitted to a table (CSV or synthetic), scored against simple baselines.

Loss: MSE on normalized targets (train-split statistics). Verification: RMSE in the target's
physical units on the validation and test rows, beside ordinary least squares fitted on the
training rows and the training mean; a network that does not beat the mean has learned nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from orbit.config import DataConfig, EvalConfig, RunConfig
from orbit.data.sampler import RowBatches
from orbit.registry import register_task
from orbit.train.task import Task

from .data import Table, read_csv, split_rows, synthetic
from .model import MLPConfig, MLPRegressor


@dataclass
class RegressionModelConfig:
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    dropout: float = 0.0  # > 0 makes multi-rank runs differ from one process (per-rank RNG streams)


@dataclass
class RegressionDataConfig(DataConfig):
    csv: str | None = None  # header x0..x{d-1},y; None: the synthetic set below
    n_samples: int = 2000
    n_features: int = 8
    noise: float = 0.1
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0  # of the synthetic set and of the split (the sample order uses train.seed)

    def validate(self) -> None:
        if self.n_samples < 10 or self.n_features < 1 or self.noise < 0:
            raise ValueError(f"need n_samples >= 10, n_features >= 1, noise >= 0; got {self.n_samples}, "
                             f"{self.n_features}, {self.noise}")
        if not (0 < self.val_fraction < 1 and 0 < self.test_fraction < 1
                and self.val_fraction + self.test_fraction < 1):
            raise ValueError(f"need val_fraction, test_fraction in (0, 1) with a sum < 1; got "
                             f"{self.val_fraction}, {self.test_fraction}")


@dataclass
class RegressionEvalConfig(EvalConfig):
    batch_size: int = 512


def ols_fit_predict(x_train: np.ndarray, y_train: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Ordinary least squares with intercept, fitted on the training rows only."""
    add = lambda a: np.concatenate([a, np.ones((len(a), 1))], axis=1)  # noqa: E731
    coef, *_ = np.linalg.lstsq(add(x_train), y_train, rcond=None)
    return add(x) @ coef


def rmse(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt(np.mean((pred - truth) ** 2)))


@register_task("regression", model=RegressionModelConfig, data=RegressionDataConfig, eval=RegressionEvalConfig)
class RegressionTask(Task):
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        d = cfg.data
        x, y = read_csv(d.csv) if d.csv else synthetic(d.n_samples, d.n_features, d.noise, d.seed)
        self.table = Table(x, y, split_rows(len(x), d.val_fraction, d.test_fraction, d.seed))
        self._test_pred: np.ndarray | None = None

    def build_model(self) -> nn.Module:
        m = self.cfg.model
        return MLPRegressor(MLPConfig(self.table.x.shape[1], list(m.hidden), self.table.y.shape[1], m.dropout))

    def train_batches(self, dp_rank: int, dp_size: int) -> RowBatches:
        return RowBatches(self.table.xn, self.table.yn, self.table.split.train, self.cfg.data.batch_size,
                          self.cfg.train.seed, dp_rank, dp_size)

    def model_inputs(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor]:
        return (batch[0],)

    def loss(self, output: torch.Tensor, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return nn.functional.mse_loss(output.float(), batch[1])

    def train_flops_per_sample(self) -> float:
        m = self.cfg.model
        widths = [self.table.x.shape[1], *m.hidden, self.table.y.shape[1]]
        return 6.0 * sum(a * b for a, b in zip(widths, widths[1:]))  # forward 2, backward 4 per weight

    # ------------------------------------------------------------------ evaluation
    def predict(self, engine, rows: np.ndarray) -> np.ndarray:
        """Physical-unit predictions (N, out) for `rows`. Every rank runs the same forwards (FSDP
        gathers parameters collectively), so every rank scores all rows."""
        size, out = self.cfg.eval.batch_size, []
        for start in range(0, len(rows), size):
            x = torch.from_numpy(self.table.xn[rows[start:start + size]])
            out.append(engine.forward((x,)).float().cpu().numpy())
        return self.table.physical_y(np.concatenate(out).astype(np.float64))

    def evaluate(self, engine, step: int) -> dict[str, Any]:
        t, s = self.table, self.table.split
        ols = ols_fit_predict(t.x[s.train], t.y[s.train], t.x)
        mean = np.broadcast_to(t.y[s.train].mean(0), t.y.shape)
        scalars = {}
        for part, rows in (("val", s.val), ("test", s.test)):
            pred = self.predict(engine, rows)
            if part == "test":
                self._test_pred = pred
            scalars[f"{part}_rmse"] = rmse(pred, t.y[rows])
            scalars[f"ols_{part}_rmse"] = rmse(ols[rows], t.y[rows])
            scalars[f"mean_{part}_rmse"] = rmse(mean[rows], t.y[rows])
        return {"scalars": scalars, "rows": {"train": len(s.train), "val": len(s.val), "test": len(s.test)}}

    def report(self, summary: dict[str, Any], run_dir: Path) -> None:
        sc, rows = summary["scalars"], summary["rows"]
        lines = [f"RMSE (physical units), step {summary.get('step')}, rows train/val/test "
                 f"{rows['train']}/{rows['val']}/{rows['test']}", "",
                 "| predictor | validation | test |", "|---|---|---|"]
        for label, prefix in (("MLP", ""), ("OLS (train fit)", "ols_"), ("train mean", "mean_")):
            lines.append(f"| {label} | {sc[prefix + 'val_rmse']:.4f} | {sc[prefix + 'test_rmse']:.4f} |")
        text = "\n".join(lines)
        print(text)
        Path(run_dir, "regression_report.md").write_text(text + "\n")

    def predictions(self, engine) -> Any:
        import xarray as xr

        rows = self.table.split.test
        pred = self._test_pred if self._test_pred is not None else self.predict(engine, rows)
        truth = self.table.y[rows]
        ols = ols_fit_predict(self.table.x[self.table.split.train], self.table.y[self.table.split.train],
                              self.table.x[rows])
        return xr.Dataset({"y_pred": ("sample", pred[:, 0]), "y_true": ("sample", truth[:, 0]),
                           "y_ols": ("sample", ols[:, 0])},
                          coords={"sample": rows.astype(np.int64)},
                          attrs={"description": "test-split predictions in physical units; sample = CSV row"})
