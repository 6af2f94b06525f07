"""The benchmark's PI3NN fits go through the one trainer, as `orbit train` does: one run of task "pi3nn"
(mean, upper, lower phases, checkpointed) per split and seed, in its own run directory, from
`configs/plugins/pi3nn/benchmark.yaml` plus the benchmark's overrides. A finished run with the same
config is reused and an interrupted one resumes from its newest checkpoint, so a re-launched benchmark
picks up where it stopped. The trained networks are then loaded back and calibrated (step 4) on the
training rows (the paper) or on the held-out calibration rows.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from orbit.config import load_config
from orbit.run.evaluate import find_checkpoint, load_trained
from orbit.run.runner import run_training

from .intervals import IntervalCalibrator, make_calibrator

BENCHMARK_CONFIG = Path(__file__).resolve().parents[3] / "configs" / "plugins" / "pi3nn" / "benchmark.yaml"


def train_run(run_dir: Path, overrides: list[str]):
    """(task, model in eval mode) of the finished run in `run_dir`, training it first unless a run of
    exactly this config already finished there."""
    cfg, run_dir = load_config(BENCHMARK_CONFIG, overrides), Path(run_dir)
    saved = run_dir / "config.yaml"
    if saved.is_file() and load_config(saved).hash() != cfg.hash():
        raise FileExistsError(f"{str(run_dir)!r} holds a PI3NN run of another config; give the benchmark a fresh "
                              f"--run-dir")
    if not (run_dir / "summary.json").is_file():  # not finished: train, or resume from the newest checkpoint
        run_training(cfg, run_dir, resume="auto")
    return load_trained(cfg, find_checkpoint(run_dir, None))


def outputs(model, xn: np.ndarray) -> np.ndarray:
    """(N, 3) float64 [f, u, l] for standardised inputs."""
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(xn, dtype=np.float32))).double().numpy()


def calibrator(task, model, calibrate_on: str) -> IntervalCalibrator:
    """Step 4 on the run's training rows ("train", the paper) or its calibration rows ("cal")."""
    rows = getattr(task.split, calibrate_on)
    f, u, l = outputs(model, task.table.xn[rows]).T
    return make_calibrator(calibrate_on, task.table.yn[rows], f, u, l)
