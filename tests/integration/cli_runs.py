"""Helpers of the end-to-end tests that run `orbit` in other processes and compare their runs."""
import csv
import os
import subprocess
import sys
from pathlib import Path

from orbit.parallel.spawn import free_port

REPO = Path(__file__).resolve().parents[2]


def step_losses(run_dir: Path) -> dict[int, float]:
    """{step: logged training loss} from a run's metrics.csv, in logging order."""
    with open(run_dir / "metrics.csv") as handle:
        return {int(row["step"]): float(row["loss"]) for row in csv.DictReader(handle)}


def torchrun(args: list[str], nproc: int, env: dict[str, str] | None = None, timeout: int = 900) -> None:
    """`torchrun --nproc-per-node nproc -m orbit *args` from the repository root; fails the test
    with the output's tail when it does not exit 0."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port",
               str(free_port()), "-m", "orbit", *args]
    done = subprocess.run(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"torchrun failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
