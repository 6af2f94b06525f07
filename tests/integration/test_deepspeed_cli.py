"""`parallel.engine: deepspeed` end to end: `torchrun -m orbit pretrain` on 2 ranks under DeepSpeed
ZeRO logs the same per-step losses in metrics.csv as one process with the same seed and global
batch (4 samples), and `--resume auto` continues such a run exactly on the same world size.

Each torchrun launch costs ~20 s on 2 cores (start-up, `import deepspeed`, evaluation); the first
DeepSpeed engine on a machine also JIT-compiles a comm op (~30 s, cached in ~/.cache/torch_extensions).
"""
import csv
import shutil

import pytest

from orbit.cli import main
from cli_runs import torchrun
from test_cli import _tiny_run

pytest.importorskip("deepspeed", reason="parallel.engine 'deepspeed' needs DeepSpeed (pip install orbit[deepspeed])")

# Gradient clipping is active: the first steps' gradient norms are ~0.07, so DeepSpeed's clipping is compared too.
COMMON = ("train.max_steps=4", "train.log_every=1", "train.ckpt_every=2", "train.grad_clip=0.05")
# Reached here: per-step losses agree to ~1e-7 relative (float32 reductions in another order).
LOSS_RTOL = 1e-5
ZERO3 = ("parallel.zero_stage=3", "data.batch_size=1", "train.grad_accum_steps=2", "train.activation_checkpointing=true")


def _rows(run_dir):
    with open(run_dir / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def _losses(run_dir):
    return [float(row["loss"]) for row in _rows(run_dir)]


def _torchrun(toy_root, run_dir, *extra):
    """2 ranks under DeepSpeed, each on half of the reference's global batch."""
    torchrun(_tiny_run(toy_root, run_dir, *COMMON, "parallel.engine=deepspeed", *extra), 2,
             env={"DS_ACCELERATOR": "cpu"}, timeout=600)


@pytest.fixture(scope="module")
def reference(toy_root, tmp_path_factory):
    """One process, batch 4 (`_tiny_run`'s data.batch_size)."""
    run_dir = tmp_path_factory.mktemp("single") / "run"
    assert main(_tiny_run(toy_root, run_dir, *COMMON)) == 0
    return _losses(run_dir)


@pytest.fixture(scope="module")
def zero3_run(toy_root, tmp_path_factory):
    """ZeRO-3 with 2 accumulated micro-batches of 1 sample per rank and activation checkpointing."""
    run_dir = tmp_path_factory.mktemp("zero3") / "run"
    _torchrun(toy_root, run_dir, *ZERO3)
    return run_dir


def _assert_same_losses(losses, reference):
    assert len(losses) == len(reference) == 4
    for step, (loss, ref) in enumerate(zip(losses, reference), start=1):
        assert abs(loss - ref) <= LOSS_RTOL * abs(ref), (step, loss, ref)


def test_zero3_with_accumulation_matches_one_process(zero3_run, reference):
    _assert_same_losses(_losses(zero3_run), reference)


def test_zero2_matches_one_process(toy_root, tmp_path, reference):
    _torchrun(toy_root, tmp_path / "run", "parallel.zero_stage=2", "data.batch_size=2")
    _assert_same_losses(_losses(tmp_path / "run"), reference)


def test_zero3_resume_auto_continues_the_same_run(toy_root, zero3_run, tmp_path):
    """Drop the last checkpoint (step 4): `--resume auto` restarts from step 2 and logs the same rows."""
    run_dir = tmp_path / "run"
    shutil.copytree(zero3_run, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "step_00000004")
    _torchrun(toy_root, run_dir, *ZERO3, "--resume", "auto")
    resumed, uninterrupted = _rows(run_dir), _rows(zero3_run)
    columns = ("step", "loss", "lr", "grad_norm")  # the timing columns differ, of course
    assert [[row[c] for c in columns] for row in resumed] == [[row[c] for c in columns] for row in uninterrupted]


def test_fsdp_engine_refuses_a_deepspeed_checkpoint(toy_root, zero3_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(zero3_run, run_dir)
    assert main([*_tiny_run(toy_root, run_dir, *COMMON, "train.max_steps=6"), "--resume", "auto"]) == 2
    assert "written by parallel.engine 'deepspeed'" in capsys.readouterr().err
