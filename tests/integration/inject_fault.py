"""Test-only wrapper: run `orbit <args>` in this rank with one fault injected at a chosen step.

    python tests/integration/inject_fault.py FAULT RANK STEP -- pretrain --config ... [overrides]

Faults (on rank RANK, when this process starts its STEP-th training step, counted from its own start
(a resumed run counts from 1 again), i.e. when that step's batch is turned into model inputs):
- killjob: SIGKILL the whole job (every process of this process group), as a node failure would;
- die: SIGKILL this rank only;
- hang: this rank sleeps forever outside any collective;
- usr1: this rank alone receives SIGUSR1 (Slurm's warning before the time limit);
- killjob-in-publish: the whole job is SIGKILLed while rank 0 publishes the checkpoint of global
  step STEP (every shard, the metadata and extra.pt are written; the directory still has its
  temporary name).
The library is patched from here only; it has no test hooks.
"""
import os
import signal
import sys
import time

import torch.distributed as dist

import orbit.parallel.checkpoint as dcp_checkpoint
from orbit.cli import main
from orbit.tasks.pretrain import PretrainTask


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _at_step(rank: int, step: int, action) -> None:
    """Run `action` on `rank` when model_inputs is called for the `step`-th time (training step `step`)."""
    original = PretrainTask.model_inputs
    calls = {"n": 0}

    def model_inputs(self, batch):
        calls["n"] += 1
        if calls["n"] == step and _rank() == rank:
            action()
        return original(self, batch)

    PretrainTask.model_inputs = model_inputs


def _hang() -> None:
    while True:
        time.sleep(3600)


def _kill_in_publish(step: int) -> None:
    original = dcp_checkpoint.publish_checkpoint

    def publish(tmp, path):
        if path.name == f"step_{step:08d}":
            os.killpg(os.getpgrp(), signal.SIGKILL)
        return original(tmp, path)

    dcp_checkpoint.publish_checkpoint = publish


ACTIONS = {
    "killjob": lambda: os.killpg(os.getpgrp(), signal.SIGKILL),
    "die": lambda: os.kill(os.getpid(), signal.SIGKILL),
    "hang": _hang,
    "usr1": lambda: os.kill(os.getpid(), signal.SIGUSR1),
}

if __name__ == "__main__":
    fault, rank, step, separator, *args = sys.argv[1:]
    assert separator == "--", "usage: inject_fault.py FAULT RANK STEP -- ORBIT_ARGS..."
    if fault == "killjob-in-publish":
        _kill_in_publish(int(step))
    elif fault != "none":
        _at_step(int(rank), int(step), ACTIONS[fault])
    sys.exit(main(args))
