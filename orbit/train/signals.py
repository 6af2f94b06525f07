"""Stop cleanly when the batch system says the job is about to end.

Slurm sends SIGUSR1 ahead of the time limit when asked (`#SBATCH --signal=USR1@300`) and SIGTERM on
`scancel` or preemption (SIGKILL follows after its KillWait). A handler only records the signal;
the trainer acts at the next step boundary, where every rank agrees (the signal reaches ranks at
different moments), saves a checkpoint and exits with `PREEMPTED_EXIT_CODE` so a job script can
requeue and continue with `--resume auto`.
"""
from __future__ import annotations

import signal
import threading

import torch
import torch.distributed as dist

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
PREEMPTED_EXIT_CODE = 75  # sysexits EX_TEMPFAIL: "temporary failure, try again" — requeue and resume


class Preempted(SystemExit):
    """Training stopped on a signal after saving a checkpoint; exits the process with code 75."""

    def __init__(self, message: str):
        super().__init__(PREEMPTED_EXIT_CODE)
        self.message = message

    def __str__(self) -> str:
        return self.message


class StopSignals:
    """Within `with StopSignals() as stop:`, SIGTERM and SIGUSR1 set `stop.received` (the signal's
    name) instead of killing the process; the previous handlers come back on exit.

    Handlers can only be installed from the main thread; elsewhere (a test harness thread) the
    signals keep their default effect and `received` stays None.
    """

    def __init__(self):
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def _record(self, signum: int, frame) -> None:
        self.received = signal.Signals(signum).name

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._record)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is True on at least one (a one-element all-reduce MAX over the
    whole job; `device` must suit the default process group's backend)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor([int(flag)], dtype=torch.int32, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
