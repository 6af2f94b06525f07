"""train.select_best under data parallelism: 2 gloo processes (FSDP, half the batch each) choose the same
best steps per phase as one process, and end with the same validation losses up to float reduction order
(PI3NN's three phases)."""
import json

import pytest

from cli_runs import torchrun

from orbit.cli import main

ARGS = ["train", "--config", "configs/plugins/pi3nn/tiny.yaml", "train.max_steps=60", "options.bound_steps=60",
        "train.ckpt_every=30", "train.eval_every=10", "train.select_best=val_{phase}_loss",
        "train.select_mode=max"]  # the worst state: an early step, so restoring under FSDP is exercised


def test_two_processes_select_the_same_steps_as_one(tmp_path):
    assert main([*ARGS, "--run-dir", str(tmp_path / "one"), "data.batch_size=64"]) == 0
    torchrun([*ARGS, "--run-dir", str(tmp_path / "two"), "data.batch_size=32", "parallel.dp_shard=2"], 2)
    one, two = (json.loads((tmp_path / name / "summary.json").read_text()) for name in ("one", "two"))
    assert set(one["selected"]) == {"mean", "upper", "lower"}
    assert all(entry["step"] % 60 for entry in one["selected"].values())  # every phase restored an earlier step
    for phase, entry in one["selected"].items():
        assert two["selected"][phase]["step"] == entry["step"], phase
        assert two["selected"][phase]["value"] == pytest.approx(entry["value"], rel=2e-3), phase
    for key in ("val_mean_loss", "val_upper_loss", "val_lower_loss", "test_picp"):
        assert two["scalars"][key] == pytest.approx(one["scalars"][key], rel=2e-3, abs=1e-6), key
