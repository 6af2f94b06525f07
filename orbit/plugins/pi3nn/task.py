"""Task "pi3nn": PI3NN prediction intervals for a table (CSV or synthetic), trained as three phases of
the one trainer and calibrated after training (the math: `intervals.py`).

Phases (`Task.phases`), each with its own AdamW over one network, checkpointed and resumable inside:
  1. "mean"  (module `mean`,  `train.max_steps` steps): MSE of f(x) against y;
  2. "upper" (module `upper`, `options.bound_steps`): MSE of u(x) against y - f(x) on the batch's points
     with y >= f(x), f taken from the model output itself and detached;
  3. "lower" (module `lower`, `options.bound_steps`): MSE of l(x) against f(x) - y on the points with y < f(x).
Evaluation: each phase's own loss on the validation rows (`val_mean_loss`, `val_upper_loss`,
`val_lower_loss`, standardised units; `train.select_best: val_{phase}_loss` early-stops each network on
it), then step 4: alpha, beta by bisection on the training rows (`options.calibrate_on: cal`: on a
calibration part of `data.cal_fraction` of the training rows that no network trains or early-stops on,
with split conformal's finite-sample rank, `HeldOutCalibrator`) for `options.confidence`, then test
and validation PICP / MPIW, a calibration curve (PICP against gamma 0.5..0.99, no retraining) and the
per-input confidence score min(mean training width / width(x), 1). Units: the networks see x and y
standardised with training-row statistics; intervals are reported in y's units.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from orbit.config import DataConfig, EvalConfig, RunConfig
from orbit.data.sampler import RowBatches
from orbit.registry import register_task
from orbit.train.task import Phase, Task

from .data import Standardized, cubic, heteroscedastic, read_table, split_rows
from .intervals import (CALIBRATE_ON, CALIBRATION_LEVELS, IntervalCalibrator, calibration_curve, check_confidence, make_calibrator,
                        mpiw, picp)
from .model import PI3NN, PI3NNConfig

SYNTHETIC = ("heteroscedastic", "cubic")


@dataclass
class PI3NNModelConfig:
    hidden: list[int] = field(default_factory=lambda: [64])
    bound_hidden: list[int] | None = None
    activation: str = "relu"
    ood_init: bool = True  # the paper's large initial output bias of u and l
    ood_bias: float = 10.0


@dataclass
class PI3NNDataConfig(DataConfig):
    csv: str | None = None  # header x0..x{d-1},y; None: the synthetic problem below
    synthetic: str = "heteroscedastic"  # or "cubic" (the paper's 10-D OOD case)
    n_samples: int = 2000
    test_fraction: float = 0.1
    val_fraction: float = 0.1  # of the rows left after the test rows
    cal_fraction: float = 0.0  # of those rows again: the calibration part of options.calibrate_on: cal
    seed: int = 0  # of the synthetic set and of the split (the sample order uses train.seed)
    batch_size: int = 64

    def validate(self) -> None:
        if self.csv is None and self.synthetic not in SYNTHETIC:
            raise ValueError(f"data.synthetic={self.synthetic!r} is not one of {list(SYNTHETIC)} (or give data.csv)")
        if self.n_samples < 20:
            raise ValueError(f"data.n_samples={self.n_samples} must be >= 20")
        for name in ("test_fraction", "val_fraction"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"data.{name}={value} must be in the open interval (0, 1)")
        if not 0.0 <= self.cal_fraction < 1.0 - self.val_fraction:
            raise ValueError(f"data.cal_fraction={self.cal_fraction} must be in [0, 1 - data.val_fraction) "
                             f"(0: no calibration part)")


@dataclass
class PI3NNEvalConfig(EvalConfig):
    batch_size: int = 4096


@dataclass
class PI3NNOptions:
    confidence: float = 0.95  # gamma of the reported intervals; any other gamma needs no retraining
    bound_steps: int = 0  # steps of the upper and of the lower phase; 0: train.max_steps
    bound_lr: float | None = None  # None: train.lr
    bound_weight_decay: float | None = None  # AdamW weight decay of u and l; None: train.weight_decay
    calibration_levels: list[float] = field(default_factory=lambda: list(CALIBRATION_LEVELS))
    calibrate_on: str = "train"  # step 4 on the training rows (the paper) or "cal" (data.cal_fraction's rows)

    def validate(self) -> None:
        check_confidence(self.confidence, "options.confidence")
        if self.calibrate_on not in CALIBRATE_ON:
            raise ValueError(f"options.calibrate_on={self.calibrate_on!r} must be 'train' (the paper) or 'cal' "
                             f"(held-out calibration rows, data.cal_fraction > 0)")
        for gamma in self.calibration_levels:
            check_confidence(gamma, "options.calibration_levels entry")
        if self.bound_weight_decay is not None and self.bound_weight_decay < 0:
            raise ValueError(f"options.bound_weight_decay={self.bound_weight_decay} must be >= 0 (or null: "
                             "train.weight_decay)")
        if self.bound_steps < 0:
            raise ValueError(f"options.bound_steps={self.bound_steps} must be >= 0 (0: train.max_steps)")


def mean_loss(output: torch.Tensor, batch) -> torch.Tensor:
    return nn.functional.mse_loss(output[:, 0].float(), batch[1])


def _one_sided(prediction: torch.Tensor, residual: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.float()
    return (mask * (prediction - residual) ** 2).sum() / mask.sum().clamp(min=1.0)


def upper_loss(output: torch.Tensor, batch) -> torch.Tensor:
    """MSE of u against y - f on the points with y >= f (f detached: only u learns)."""
    output, y = output.float(), batch[1]
    residual = y - output[:, 0].detach()
    return _one_sided(output[:, 1], residual, residual >= 0)


def lower_loss(output: torch.Tensor, batch) -> torch.Tensor:
    """MSE of l against f - y on the points with y < f."""
    output, y = output.float(), batch[1]
    residual = output[:, 0].detach() - y
    return _one_sided(output[:, 2], residual, residual > 0)


def load_xy(d: PI3NNDataConfig) -> tuple[np.ndarray, np.ndarray]:
    if d.csv:
        return read_table(d.csv)
    return heteroscedastic(d.n_samples, d.seed) if d.synthetic == "heteroscedastic" else cubic(d.n_samples, d.seed)


@register_task("pi3nn", model=PI3NNModelConfig, data=PI3NNDataConfig, eval=PI3NNEvalConfig, options=PI3NNOptions)
class PI3NNTask(Task):
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.options: PI3NNOptions = cfg.options if cfg.options is not None else PI3NNOptions()
        d = cfg.data
        if self.options.calibrate_on == "cal" and d.cal_fraction == 0:
            raise ValueError("options.calibrate_on=cal needs calibration rows: give data.cal_fraction > 0, e.g. 0.1")
        x, y = load_xy(d)
        self.split = split_rows(len(y), d.test_fraction, d.val_fraction, d.seed, d.cal_fraction)
        self.table = Standardized(x, y, self.split.train)
        self.y_range = float(np.ptp(self.table.y))
        self._last: dict[str, Any] | None = None

    def build_model(self) -> nn.Module:
        m = self.cfg.model
        return PI3NN(PI3NNConfig(self.table.x.shape[1], list(m.hidden), None if m.bound_hidden is None else
                                 list(m.bound_hidden), m.activation, m.ood_init, m.ood_bias))

    def train_batches(self, dp_rank: int, dp_size: int) -> RowBatches:
        return RowBatches(self.table.xn, self.table.yn, self.split.train, self.cfg.data.batch_size, self.cfg.train.seed,
                          dp_rank, dp_size)

    def model_inputs(self, batch) -> tuple[torch.Tensor]:
        return (batch[0],)

    def loss(self, output: torch.Tensor, batch) -> torch.Tensor:
        return mean_loss(output, batch)

    def phases(self, train_cfg) -> list[Phase]:
        o = self.options
        bound = o.bound_steps or train_cfg.max_steps
        return [Phase("mean", train_cfg.max_steps, ("mean",), loss=mean_loss),
                Phase("upper", bound, ("upper",), lr=o.bound_lr, weight_decay=o.bound_weight_decay, loss=upper_loss),
                Phase("lower", bound, ("lower",), lr=o.bound_lr, weight_decay=o.bound_weight_decay, loss=lower_loss)]

    # ------------------------------------------------------------------ evaluation
    def network_outputs(self, engine, rows: np.ndarray | None = None, xn: np.ndarray | None = None) -> np.ndarray:
        """(N, 3) float64 [f, u, l] in standardised units, for table rows or standardised inputs."""
        xn = self.table.xn[rows] if xn is None else xn
        size, out = self.cfg.eval.batch_size, []
        for start in range(0, len(xn), size):
            out.append(engine.forward((torch.from_numpy(xn[start:start + size]),)).float().cpu().numpy())
        return np.concatenate(out).astype(np.float64)

    def calibrator(self, engine) -> IntervalCalibrator:
        rows = getattr(self.split, self.options.calibrate_on)
        f, u, l = self.network_outputs(engine, rows).T
        return make_calibrator(self.options.calibrate_on, self.table.yn[rows], f, u, l)

    def intervals(self, engine, calibrator: IntervalCalibrator, rows: np.ndarray, gamma: float):
        """(prediction, lower, upper, confidence score) in y's units."""
        f, u, l = self.network_outputs(engine, rows).T
        lower, upper = calibrator.bounds(f, u, l, gamma)
        t = self.table
        return (f * t.y_std + t.y_mean, lower * t.y_std + t.y_mean, upper * t.y_std + t.y_mean,
                calibrator.confidence_score(u, l, gamma))

    def validation_losses(self, engine) -> dict[str, float]:
        """Each phase's loss on the validation rows: what early stopping of f, u and l watches."""
        out = torch.from_numpy(self.network_outputs(engine, self.split.val)).float()
        batch = (None, torch.from_numpy(self.table.yn[self.split.val]).float())
        return {f"val_{name}_loss": float(fn(out, batch)) for name, fn in
                (("mean", mean_loss), ("upper", upper_loss), ("lower", lower_loss))}

    def validate(self, engine, step: int) -> dict[str, Any]:
        """What training looks at: only the validation losses that early stopping watches (step 4, the
        curves and the slice are the slow part of an evaluation and score test rows)."""
        return {"scalars": self.validation_losses(engine)}

    def evaluate(self, engine, step: int) -> dict[str, Any]:
        """Everything: the final evaluation of a run and `orbit evaluate` of any checkpoint."""
        gamma = self.options.confidence
        cal = self.calibrator(engine)
        s = cal.scales(gamma)
        scalars: dict[str, float] = {**self.validation_losses(engine), "alpha": s.alpha, "beta": s.beta,
                                     "calibration_above": s.above, "calibration_below": s.below,
                                     "calibration_target_outside": s.target,
                                     "calibration_picp": 1.0 - (s.above + s.below) / s.n}
        curves = {}
        for part, rows in (("val", self.split.val), ("test", self.split.test)):
            pred, lower, upper, score = self.intervals(engine, cal, rows, gamma)
            y = self.table.y[rows]
            scalars[f"{part}_picp"] = picp(y, lower, upper)
            scalars[f"{part}_mpiw"] = mpiw(lower, upper, self.y_range)
            scalars[f"{part}_rmse"] = float(np.sqrt(np.mean((pred - y) ** 2)))
            scalars[f"{part}_confidence_score"] = float(score.mean())
            f, u, l = self.network_outputs(engine, rows).T
            curves[part] = calibration_curve(cal, self.table.yn[rows], f, u, l, self.options.calibration_levels)
        self._last = {"pred": pred, "lower": lower, "upper": upper, "score": score,
                      "slice": self._slice(engine, cal, gamma)}
        return {"scalars": scalars, "confidence": gamma, "calibration": curves,
                "rows": {part: len(getattr(self.split, part)) for part in ("train", "val", "cal", "test")}}

    def _slice(self, engine, cal: IntervalCalibrator, gamma: float) -> dict[str, np.ndarray]:
        """The interval along x0 (other inputs at their training mean), reaching 50% of x0's training
        range beyond the data on each side, where the OOD initialisation should widen it."""
        t, train = self.table, self.split.train
        lo, hi = t.x[train, 0].min(), t.x[train, 0].max()
        x0 = np.linspace(lo - 0.5 * (hi - lo), hi + 0.5 * (hi - lo), 200)
        xn = np.zeros((len(x0), t.x.shape[1]), dtype=np.float32)
        xn[:, 0] = (x0 - t.x_mean[0]) / t.x_std[0]
        f, u, l = self.network_outputs(engine, xn=xn).T
        lower, upper = cal.bounds(f, u, l, gamma)
        return {"x0": x0, "f": f * t.y_std + t.y_mean, "lower": lower * t.y_std + t.y_mean,
                "upper": upper * t.y_std + t.y_mean, "score": cal.confidence_score(u, l, gamma),
                "train_x0": t.x[train, 0], "train_y": t.y[train], "range": (lo, hi)}

    def report(self, summary: dict[str, Any], run_dir: Path) -> None:
        sc, curves = summary["scalars"], summary["calibration"]
        gamma = summary["confidence"]
        Path(run_dir, "pi3nn_calibration.json").write_text(json.dumps(curves, indent=1))
        lines = [f"PI3NN at confidence {gamma}, step {summary.get('step')}: alpha {sc['alpha']:.4f}, beta "
                 f"{sc['beta']:.4f}; {self.options.calibrate_on} rows above U / below L: {sc['calibration_above']} / "
                 f"{sc['calibration_below']} (at most {sc['calibration_target_outside']} "
                 f"{'each' if self.options.calibrate_on == 'train' else 'in all'})", "",
                 "| part | PICP | MPIW (/ range of y) | RMSE | mean confidence score |", "|---|---|---|---|---|"]
        for part in ("val", "test"):
            lines.append(f"| {part} | {sc[part + '_picp']:.4f} | {sc[part + '_mpiw']:.4f} | {sc[part + '_rmse']:.4f} "
                         f"| {sc[part + '_confidence_score']:.3f} |")
        lines += ["", "Calibration (no retraining): gamma -> PICP", "", "| gamma | val PICP | test PICP |",
                  "|---|---|---|"]
        for v, t in zip(curves["val"], curves["test"]):
            lines.append(f"| {v['gamma']:.2f} | {v['picp']:.4f} | {t['picp']:.4f} |")
        text = "\n".join(lines)
        print(text)
        Path(run_dir, "pi3nn_report.md").write_text(text + "\n")
        plot_calibration({"PI3NN val": curves["val"], "PI3NN test": curves["test"]}, Path(run_dir, "pi3nn_calibration.png"))
        if self._last is not None:
            plot_slice(self._last["slice"], gamma, Path(run_dir, "pi3nn_slice.png"))

    def predictions(self, engine) -> Any:
        import xarray as xr

        rows = self.split.test
        pred, lower, upper, score = self.intervals(engine, self.calibrator(engine), rows, self.options.confidence)
        return xr.Dataset({"y_pred": ("sample", pred), "y_lower": ("sample", lower), "y_upper": ("sample", upper),
                           "confidence_score": ("sample", score), "y_true": ("sample", self.table.y[rows])},
                          coords={"sample": rows.astype(np.int64)},
                          attrs={"confidence": self.options.confidence,
                                 "description": "PI3NN test-split intervals in y's units; sample = table row"})


def plot_calibration(curves: dict[str, list[dict]], path: Path) -> None:
    """PICP against gamma, one line per curve, and the diagonal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0.5, 1.0], [0.5, 1.0], "k:", lw=1, label="ideal")
    for label, rows in curves.items():
        ax.plot([r["gamma"] for r in rows], [r["picp"] for r in rows], marker="o", ms=3, label=label)
    ax.set_xlabel("confidence level gamma")
    ax.set_ylabel("PICP")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_slice(sl: dict, gamma: float, path: Path) -> None:
    """Training points, f and the gamma interval along x0, and the confidence score below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(2, 1, figsize=(6, 5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.scatter(sl["train_x0"], sl["train_y"], s=3, c="0.6", label="training rows")
    ax.plot(sl["x0"], sl["f"], "k", lw=1, label="f")
    ax.fill_between(sl["x0"], sl["lower"], sl["upper"], alpha=0.3, label=f"{gamma:.0%} interval")
    for edge in sl["range"]:
        ax.axvline(edge, color="0.3", ls=":", lw=1)
        bx.axvline(edge, color="0.3", ls=":", lw=1)
    ax.set(ylabel="y")
    ax.legend(fontsize=7)
    bx.plot(sl["x0"], sl["score"])
    bx.set(xlabel="x0 (other inputs at their training mean)", ylabel="confidence", ylim=(0, 1.05))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
