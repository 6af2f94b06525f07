"""Fine-tuning runs through the parallel engine like pretraining: a downscaling run started from the
pretrained checkpoint logs the same per-step losses on one process, on tensor parallel (tp=2) and on
sharded data parallel (dp_shard=2, with the backbone frozen inside FSDP)."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orbit.cli import main
from orbit.parallel.spawn import free_port

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs/finetune/downscale/tiny.yaml")
LOSS_RTOL = 1e-5


@pytest.fixture(scope="module")
def pairs_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("downscale") / "pairs.zarr"
    assert main(["data", "downscale", "--out", str(path), "--years", "1990", "1991", "--train-years", "1990", "1990",
                 "--coarse-grid", "16x32", "--scale", "4", "--step-hours", "24"]) == 0
    return path


def _args(store, ckpt, run_dir, *extra):
    return ["finetune", "--config", CONFIG, "--init", str(ckpt), "--run-dir", str(run_dir), f"options.store={store}",
            "data.train_years=[1990,1990]", "eval.years=[1991,1991]", "train.max_steps=3", "train.warmup_steps=1",
            "train.log_every=1", "train.ckpt_every=3", "eval.stride=60", "eval.max_samples=2", "eval.batch_size=2",
            *extra]


def _losses(run_dir):
    with open(run_dir / "metrics.csv") as handle:
        return {int(row["step"]): float(row["loss"]) for row in csv.DictReader(handle)}


def _torchrun(args):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
               str(free_port()), "-m", "orbit", *args]
    done = subprocess.run(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"torchrun failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


@pytest.mark.parametrize("freeze", ["none", "backbone"])
def test_downscaling_finetune_matches_one_process_on_tp_and_fsdp(pairs_store, pretrained_ckpt, tmp_path, freeze):
    runs = {name: tmp_path / name for name in ("one", "tp2", "dp_shard2")}
    common = (f"finetune.freeze={freeze}",)
    assert main(_args(pairs_store, pretrained_ckpt, runs["one"], *common, "data.batch_size=4")) == 0
    _torchrun(_args(pairs_store, pretrained_ckpt, runs["tp2"], *common, "data.batch_size=4", "parallel.tp=2",
                    "parallel.dp_shard=1"))
    _torchrun(_args(pairs_store, pretrained_ckpt, runs["dp_shard2"], *common, "data.batch_size=2",
                    "parallel.dp_shard=2"))
    reference = _losses(runs["one"])
    assert reference.keys() == {1, 2, 3}
    for name in ("tp2", "dp_shard2"):
        losses = _losses(runs[name])
        for step, loss in reference.items():
            assert losses[step] == pytest.approx(loss, rel=LOSS_RTOL), (name, step)
