"""Runs that survive faults, through the CLI with ranks we launch ourselves (as srun would: one
process per rank, no torchrun agent to clean up after a failure).

- The whole 2-rank job is SIGKILLed mid-run, or while a checkpoint is being published, or one rank
  alone gets SIGUSR1: `--resume auto` continues and metrics.csv equals an uninterrupted run's,
  bitwise (rows after the resumed step are dropped on resume, so the CSV is the true curve).
- One of 4 ranks dies or hangs: every other rank exits non-zero, naming it (the watchdog).
Faults are injected by tests/integration/inject_fault.py; every wait has a timeout.
"""
import csv
import json
import os
import re
import socket
import signal
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from orbit.config import load_config
from orbit.parallel.spawn import free_port
from orbit.train import checkpoint as ckpt
from orbit.train.signals import PREEMPTED_EXIT_CODE
from orbit.train.watchdog import PEER_FAILURE_EXIT_CODE
from test_cli import _tiny_run

REPO = Path(__file__).resolve().parents[2]
WRAPPER = Path(__file__).with_name("inject_fault.py")
RUN = ("train.max_steps=7", "train.log_every=1", "train.ckpt_every=3", "train.keep_last=3", "parallel.dp_shard=2",
       "data.batch_size=2", "parallel.heartbeat_timeout_s=4", "parallel.timeout_s=60")
JOB_TIMEOUT_S = 120


def launch(world_size, args, logs: Path, fault=("none", 0, 0)):
    """Start `world_size` ranks of `orbit <args>` in one new process group; returns the processes."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "PMI_", "PMIX_"))}
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for rank in range(world_size):
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                   LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   OMP_NUM_THREADS="1")
        with open(logs / f"rank{rank}.log", "w") as out:
            procs.append(subprocess.Popen(
                [sys.executable, str(WRAPPER), *map(str, fault), "--", *args], cwd=REPO, env=dict(env),
                stdout=out, stderr=subprocess.STDOUT, process_group=procs[0].pid if procs else 0))
    return procs


def finish(procs, logs: Path) -> list[int]:
    """Exit codes of every rank; the whole group is killed if it outlives the timeout (then the test fails)."""
    try:
        for proc in procs:
            proc.wait(timeout=JOB_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(procs[0].pid, signal.SIGKILL)
        pytest.fail(f"job still running after {JOB_TIMEOUT_S} s:\n{output(logs)}")
    return [proc.returncode for proc in procs]


def output(logs: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(logs.glob("rank*.log")))


def run_job(toy_root, run_dir, logs, *extra, world_size=2, fault=("none", 0, 0), resume=False):
    args = _tiny_run(toy_root, run_dir, *RUN, *extra) + (["--resume", "auto"] if resume else [])
    return finish(launch(world_size, args, logs, fault), logs)


def curve(run_dir):
    """metrics.csv rows as strings: equal strings = bitwise equal floats."""
    with open(run_dir / "metrics.csv") as handle:
        return [(row["step"], row["loss"], row["lr"], row["grad_norm"]) for row in csv.DictReader(handle)]


class Reference(NamedTuple):
    run_dir: Path
    curve: list


@pytest.fixture(scope="module")
def reference(toy_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    codes = run_job(toy_root, run_dir, run_dir.parent / "logs")
    assert codes == [0, 0], output(run_dir.parent / "logs")
    rows = curve(run_dir)
    assert [int(r[0]) for r in rows] == list(range(1, 8))
    return Reference(run_dir, rows)


def test_start_up_is_logged_and_recorded(reference):
    run_dir = reference.run_dir
    info = json.loads((run_dir / "run_info.json").read_text())
    host = socket.gethostname()
    assert (info["launcher"], info["world_size"]) == ("torchrun", 2)
    assert info["ranks"] == [{"host": host, "device": "cpu"}] * 2
    assert info["mesh"] == {"engine": "ParallelEngine",
                            "axes": {"pp": 1, "dp_replicate": 1, "dp_shard": 2, "sp": 1, "tp": 1}}
    assert {"orbit", "python", "torch", "numpy", "xarray", "zarr"} <= info["versions"].keys()
    assert info["config_hash"] == load_config(run_dir / "config.yaml").hash()
    log = (run_dir.parent / "logs" / "rank0.log").read_text()
    assert f"config hash {info['config_hash']}" in log
    assert f"launcher torchrun | world size 2 on 1 host(s) {host} | devices cpu" in log
    assert "mesh ParallelEngine pp=1 x dp_replicate=1 x dp_shard=2 x sp=1 x tp=1 | versions orbit " in log


def _checkpoints(run_dir):
    return [p.name for p in sorted((run_dir / "checkpoints").iterdir())]


def test_killed_and_preempted_jobs_resume_bitwise(toy_root, tmp_path, reference):
    """One run directory through three faults; after each, `--resume auto` picks the newest complete
    checkpoint, and the final curve equals the uninterrupted one."""
    run_dir = tmp_path / "run"

    # 1. The whole job is SIGKILLed while rank 0 renames the fully written checkpoint of step 6.
    codes = run_job(toy_root, run_dir, tmp_path / "logs1", fault=("killjob-in-publish", 0, 6))
    assert codes == [-signal.SIGKILL] * 2, output(tmp_path / "logs1")
    assert _checkpoints(run_dir)[0] == "step_00000003"
    assert _checkpoints(run_dir)[1].startswith("step_00000006.tmp-")  # complete content, never published
    assert ckpt.latest_checkpoint(run_dir / "checkpoints").name == "step_00000003"

    # 2. Resumed at 3; rank 1 alone gets SIGUSR1 during step 5 (its 2nd): both ranks save step 5
    #    (asynchronously, waited for) and exit with 75.
    codes = run_job(toy_root, run_dir, tmp_path / "logs2", "train.async_checkpoint=true", resume=True,
                    fault=("usr1", 1, 2))
    text = output(tmp_path / "logs2")
    assert codes == [PREEMPTED_EXIT_CODE] * 2, text
    assert f"resumed from {run_dir / 'checkpoints' / 'step_00000003'}" in text
    assert "stopping at step 5 on a signal to another rank" in (tmp_path / "logs2" / "rank0.log").read_text()
    assert "stopping at step 5 on SIGUSR1" in (tmp_path / "logs2" / "rank1.log").read_text()
    assert ckpt.latest_checkpoint(run_dir / "checkpoints").name == "step_00000005"
    assert [int(row[0]) for row in curve(run_dir)] == [1, 2, 3, 4, 5]

    # 3. Resumed at 5 (saves step 6); the whole job is SIGKILLed as step 7 starts.
    codes = run_job(toy_root, run_dir, tmp_path / "logs3", resume=True, fault=("killjob", 1, 2))
    assert codes == [-signal.SIGKILL] * 2, output(tmp_path / "logs3")
    assert ckpt.latest_checkpoint(run_dir / "checkpoints").name == "step_00000006"

    # 4. Resumed at 6: finishes, and the CSV (rows past the resumed step dropped) is the true curve.
    codes = run_job(toy_root, run_dir, tmp_path / "logs4", resume=True)
    assert codes == [0, 0], output(tmp_path / "logs4")
    assert f"resumed from {run_dir / 'checkpoints' / 'step_00000006'}" in output(tmp_path / "logs4")
    assert curve(run_dir) == reference.curve


@pytest.mark.parametrize("fault, failed, expected", [
    ("die", 2, r"rank 2 \(.*\) is dead: last heartbeat \d+ s ago"),
    ("die", 0, r"rank 0 is unreachable: lost the heartbeat store it hosts"),  # the store dies with it
    ("hang", 2, r"hung: rank 2 \(.*\) stuck at step 3 \(train\) in tests/integration/inject_fault.py"),
])
def test_a_dead_or_hung_rank_ends_the_job_with_its_name(toy_root, tmp_path, fault, failed, expected):
    logs = tmp_path / "logs"
    codes = run_job(toy_root, tmp_path / "run", logs, "parallel.dp_shard=4", "data.batch_size=1",
                    world_size=4, fault=(fault, failed, 3))
    text = output(logs)
    assert all(code != 0 for code in codes), text
    for rank in sorted({0, 1, 2, 3} - {failed}):
        assert codes[rank] == PEER_FAILURE_EXIT_CODE, text
        log = (logs / f"rank{rank}.log").read_text()
        assert re.search(expected, log), f"rank {rank}:\n{log[-3000:]}"
    if fault == "hang":
        assert "this rank is the one named" in (logs / f"rank{failed}.log").read_text()
