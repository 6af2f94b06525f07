"""The regression plug-in through the CLI: one process, FSDP on two ranks with the same global batch
(the same per-step loss and gradient norm), `orbit evaluate`, and a clear error for tensor parallelism."""
import csv
import json
import os
import subprocess
import sys

import pytest
import xarray as xr

from cli_runs import REPO, step_losses, torchrun
from orbit.parallel.spawn import free_port

CONFIG = "configs/plugins/regression/tiny.yaml"
STEPS = ("train.max_steps=20", "train.log_every=1", "train.ckpt_every=20")
RTOL = 1e-5


def _run(run_dir, *extra):
    # `orbit finetune` runs the task its config names; `orbit pretrain` always runs task=pretrain
    return ["train", "--config", CONFIG, "--run-dir", str(run_dir), *STEPS, *extra]


def _orbit(args):
    return subprocess.run([sys.executable, "-m", "orbit", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)


def _grad_norms(run_dir):
    with open(run_dir / "metrics.csv") as handle:
        return {int(row["step"]): float(row["grad_norm"]) for row in csv.DictReader(handle)}


def test_fsdp_on_two_ranks_matches_one_process_and_evaluates(tmp_path):
    single, fsdp = tmp_path / "single", tmp_path / "fsdp"
    done = _orbit(_run(single, "data.batch_size=64"))
    assert done.returncode == 0, done.stderr[-4000:]
    torchrun(_run(fsdp, "data.batch_size=32", "parallel.dp_shard=2"), 2)  # the same global batch of 64
    reference, parallel = step_losses(single), step_losses(fsdp)
    assert reference.keys() == parallel.keys() == set(range(1, 21))
    ref_norm, par_norm = _grad_norms(single), _grad_norms(fsdp)
    for step in reference:
        assert parallel[step] == pytest.approx(reference[step], rel=RTOL), step
        assert par_norm[step] == pytest.approx(ref_norm[step], rel=RTOL), step

    # the two-rank checkpoint scored on one process gives the scores the run logged at its end
    done = _orbit(["evaluate", "--run-dir", str(fsdp)])  # trained on 2 ranks, scored on 1
    assert done.returncode == 0, done.stderr[-4000:]
    logged = json.loads((fsdp / "summary.json").read_text())["scalars"]
    scored = json.loads((fsdp / "evaluation" / "evaluation.json").read_text())["scalars"]
    assert scored == pytest.approx(logged, rel=RTOL)
    predictions = xr.open_zarr(fsdp / "evaluation" / "predictions.zarr")
    assert predictions.y_pred.dims == ("sample",) and predictions.sizes["sample"] == 300
    assert "OLS" in (fsdp / "evaluation" / "regression_report.md").read_text()


def test_tensor_parallel_is_refused_naming_the_family_and_its_axes(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
               str(free_port()), "-m", "orbit", *_run(tmp_path / "tp", "parallel.tp=2", "parallel.dp_shard=1")]
    done = subprocess.run(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "'mlp'" in output and "['dp_replicate', 'dp_shard']" in output and "parallel.tp=1" in output, output[-3000:]
