"""Streamflow model selection: the validation losses come from validation windows only, `validate` (what
a training run's periodic evaluations and checkpoint selection use) computes nothing else (no test score
while the checkpoint is being chosen), and `evaluate`, the final one, scores validation and test in full."""
from pathlib import Path

import numpy as np
import pytest
import torch

from orbit.config import load_config
from orbit.parallel.engine import LocalEngine
from orbit.registry import build_task

TINY = Path(__file__).resolve().parents[2] / "configs/plugins/streamflow/tiny.yaml"


def _task(*overrides):
    task = build_task(load_config(TINY, ["data.n_basins=4", "data.seq_len=10", *overrides]))
    torch.manual_seed(0)
    return task, LocalEngine(task.build_model(), loss_fn=task.loss)


def test_validation_windows_lie_in_the_validation_period_and_give_the_loss():
    task, engine = _task("eval.select_samples=100")
    windows = task.validation_windows()
    first, last = task.days["val"]
    assert len(windows.y) == 100 and set(windows.basin.tolist()) == set(range(4))
    assert windows.t0.min() + 1 >= first and windows.t0.max() + 1 <= last  # targets: validation days only
    with torch.no_grad():
        expected = float(task.loss(engine.forward(windows.inputs()), windows))
    assert task.validation_losses(engine) == {"val_mean_loss": pytest.approx(expected, rel=1e-6)}


def test_training_validates_on_validation_windows_only_and_evaluates_in_full():
    task, engine = _task()
    with torch.no_grad():
        validation = task.validate(engine, 10)  # periodic evaluations and checkpoint selection
        final = task.evaluate(engine, 60)  # the final evaluation and `orbit evaluate` of any checkpoint
    assert validation == {"scalars": {"val_mean_loss": pytest.approx(final["scalars"]["val_mean_loss"])}}
    assert {"val_mean_loss", "val_nse", "test_nse"} <= set(final["scalars"]) and "test" in final["median"]


def test_intervals_report_each_phase_loss():
    task, engine = _task("options.intervals=true", "options.bound_steps=5")
    with torch.no_grad():
        losses = task.validation_losses(engine)
    assert set(losses) == {"val_mean_loss", "val_upper_loss", "val_lower_loss"}
    assert all(np.isfinite(v) and v >= 0 for v in losses.values())
    assert [p.steps for p in task.phases(task.cfg.train)] == [60, 5, 5]
