"""The launch scripts parse (`bash -n`): a syntax error there only shows on the cluster, in a queued job."""
import subprocess
from pathlib import Path

import pytest

LAUNCH = Path(__file__).resolve().parents[2] / "launch"
SCRIPTS = sorted(p for p in LAUNCH.rglob("*") if p.suffix in (".sh", ".sbatch"))


def test_every_launcher_has_a_script():
    names = {p.relative_to(LAUNCH).as_posix() for p in SCRIPTS}
    assert {"frontier/pretrain.sbatch", "frontier/env.sh", "slurm/generic.sbatch", "mpirun.sh", "torchrun.sh"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.relative_to(LAUNCH).as_posix())
def test_script_parses(script):
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
