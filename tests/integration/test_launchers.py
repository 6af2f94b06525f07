"""One short `orbit pretrain` (tp=2 x dp_shard=2) started by each launcher: launch/torchrun.sh,
launch/mpirun.sh on MPICH's mpiexec (from the venv: `pip install mpich mpi4py`, the dev extras), and a
simulated srun (four processes given the SLURM_* variables of a 2-node x 2-task step). All three must
log the same per-step losses and record the launcher that started them."""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from orbit.parallel.spawn import free_port
from cli_runs import REPO, step_losses
from test_cli import _tiny_run

VENV_BIN = Path(sys.executable).parent
STEPS = ("train.max_steps=3", "train.log_every=1", "train.ckpt_every=100", "model.depth=2", "model.num_heads=4",
         "data.batch_size=2", "parallel.tp=2", "parallel.dp_shard=2")
LOSS_RTOL = 1e-5  # the same layout and seed under each launcher: only reduction order may differ
TIMEOUT_S = 300  # per launch; a hung rendezvous fails the test instead of hanging CI
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                 "TORCHELASTIC_RUN_ID")
LAUNCHER_PREFIXES = ("SLURM_", "OMPI_", "PMI_", "PMIX_", "MPI_LOCAL", "PALS_", "HYDRA_")


def _clean_env(**extra):
    """This process's environment without any launcher's variables (CI may itself run under one)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS and not k.startswith(LAUNCHER_PREFIXES)}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable, **extra}


def _start(command, env):
    # Own session: on a timeout the whole tree (launcher, proxies, ranks) is killed together.
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _wait_all(procs, name):
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=TIMEOUT_S)[0])
    except subprocess.TimeoutExpired:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"{name} did not finish within {TIMEOUT_S} s")
    failed = [(i, proc.returncode, out[-3000:]) for i, (proc, out) in enumerate(zip(procs, outputs))
              if proc.returncode != 0]
    assert not failed, f"{name} failed: " + "\n".join(f"process {i} exit {rc}:\n{out}" for i, rc, out in failed)


def _torchrun(args):
    _wait_all([_start(["bash", "launch/torchrun.sh", "4", *args], _clean_env())], "launch/torchrun.sh")


def _mpiexec(args):
    mpiexec = VENV_BIN / "mpiexec" if (VENV_BIN / "mpiexec").exists() else shutil.which("mpiexec")
    if mpiexec is None:
        pytest.fail("mpiexec not found next to the Python or on PATH: `pip install mpich mpi4py` (the dev extras, "
                    "`make setup`) or install OpenMPI")
    try:
        import mpi4py  # noqa: F401  (orbit imports it inside the ranks)
    except ImportError:
        pytest.fail("mpi4py is not installed: `pip install mpi4py` (the dev extras, `make setup`)")
    _wait_all([_start(["bash", "launch/mpirun.sh", "4", *args], _clean_env(MPIRUN=str(mpiexec)))],
              "launch/mpirun.sh")


def _simulated_srun(args):
    """What `srun -N 2 --ntasks-per-node=2` gives each task; the two "nodes" are loopback addresses of
    this host, so the rendezvous host comes from parsing the compressed nodelist."""
    port = str(free_port())
    procs = []
    for rank in range(4):
        env = _clean_env(SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank % 2), SLURM_NODEID=str(rank // 2),
                         SLURM_NTASKS="4", SLURM_TASKS_PER_NODE="2(x2)", SLURM_NODELIST="127.0.0.[1-2]",
                         SLURM_STEP_NODELIST="127.0.0.[1-2]", SLURM_JOB_ID="4242", SLURM_STEP_ID="0",
                         MASTER_PORT=port)
        procs.append(_start([sys.executable, "-m", "orbit", *args], env))
    _wait_all(procs, "simulated srun")


def _launch_record(run_dir):
    return json.loads((run_dir / "run_info.json").read_text())["launch"]


def test_every_launcher_trains_the_same(toy_root, tmp_path):
    runs = {"torchrun": _torchrun, "mpirun": _mpiexec, "srun": _simulated_srun}
    for launcher, launch in runs.items():
        launch(_tiny_run(toy_root, tmp_path / launcher, *STEPS))

    reference = step_losses(tmp_path / "torchrun")
    assert reference.keys() == {1, 2, 3}
    for launcher in runs:
        losses = step_losses(tmp_path / launcher)
        assert losses.keys() == reference.keys(), launcher
        for step in reference:
            assert losses[step] == pytest.approx(reference[step], rel=LOSS_RTOL), (launcher, step)
        record = _launch_record(tmp_path / launcher)
        assert (record["launcher"], record["rank"], record["world_size"], record["device"], record["backend"]) == \
            (launcher, 0, 4, "cpu", "gloo"), record
    srun = _launch_record(tmp_path / "srun")
    assert (srun["master_addr"], srun["local_world_size"]) == ("127.0.0.1", 2)  # first host of 127.0.0.[1-2]
    mpi = _launch_record(tmp_path / "mpirun")
    assert mpi["local_world_size"] == 4 and mpi["master_port"] > 0  # from MPI: the ranks on this node, rank 0's port
