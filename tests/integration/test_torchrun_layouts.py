"""The Hybrid-STOP engine through the CLI: `torchrun -m orbit pretrain` on (tp=2, dp_shard=2)
logs the single-process run's per-step losses, and its checkpoint resumes on another layout
(pp=2, sp=2) and on one process with the uninterrupted run's next loss."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orbit.cli import main
from orbit.parallel.spawn import free_port
from test_cli import _tiny_run

REPO = Path(__file__).resolve().parents[2]
STEPS = ("train.max_steps=4", "train.log_every=1", "train.ckpt_every=3", "model.depth=2", "model.num_heads=4")
LOSS_RTOL = 1e-5  # reached: ~1e-7 (float32 reductions in another order)


def _losses(run_dir):
    with open(run_dir / "metrics.csv") as handle:
        return {int(row["step"]): float(row["loss"]) for row in csv.DictReader(handle)}


def _torchrun(args):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "4", "--master-port",
               str(free_port()), "-m", "orbit", *args]
    done = subprocess.run(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, f"torchrun failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def test_layouts_match_one_process_and_checkpoints_reshard(toy_root, tmp_path):
    single, tp_dp = tmp_path / "single", tmp_path / "tp_dp"
    assert main(_tiny_run(toy_root, single, *STEPS)) == 0  # global batch 4
    _torchrun(_tiny_run(toy_root, tp_dp, *STEPS, "data.batch_size=2", "parallel.tp=2", "parallel.dp_shard=2"))
    reference, parallel = _losses(single), _losses(tp_dp)
    assert reference.keys() == parallel.keys() == {1, 2, 3, 4}
    for step in reference:
        assert parallel[step] == pytest.approx(reference[step], rel=LOSS_RTOL), step

    step3 = tp_dp / "checkpoints" / "step_00000003"
    on_pp_sp = tmp_path / "pp_sp"
    _torchrun([*_tiny_run(toy_root, on_pp_sp, *STEPS, "parallel.pp=2", "parallel.sp=2", "parallel.dp_shard=1",
                          "parallel.pp_microbatches=2"), "--resume", str(step3)])
    on_one = tmp_path / "one"
    assert main([*_tiny_run(toy_root, on_one, *STEPS), "--resume", str(step3)]) == 0
    for resumed in (on_pp_sp, on_one):
        assert _losses(resumed)[4] == pytest.approx(reference[4], rel=LOSS_RTOL), resumed.name
