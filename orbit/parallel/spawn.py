"""Start N local processes in one gloo/nccl process group, for tests and CPU experiments.

Free port chosen by the OS (no fixed sleeps, no port clashes between concurrent test runs); each
rank's return value comes back to the caller; a failing rank's traceback is re-raised in the
caller with its rank, and the others are not left hanging.
"""
from __future__ import annotations

import datetime as dt
import os
import socket
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


class RankFailed(RuntimeError):
    """A spawned rank raised; the message carries its rank and traceback."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, out_dir: str, fn: Callable, args: tuple,
            timeout_s: float) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    result_path = Path(out_dir) / f"rank{rank}.pt"
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world_size,
                                timeout=dt.timedelta(seconds=timeout_s))
        torch.save({"ok": True, "value": fn(rank, world_size, *args)}, result_path)
    except BaseException:  # report everything, including a KeyboardInterrupt in a rank
        torch.save({"ok": False, "error": traceback.format_exc()}, result_path)
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn(fn: Callable, world_size: int, *args: Any, timeout_s: float = 300.0) -> list[Any]:
    """Run `fn(rank, world_size, *args)` on `world_size` CPU ranks; returns the per-rank results.

    `fn` must be importable (defined at module level) so it pickles into the spawned processes.
    """
    with tempfile.TemporaryDirectory(prefix="orbit-spawn-") as out_dir:
        port = free_port()
        try:
            mp.start_processes(_worker, args=(world_size, port, out_dir, fn, args, timeout_s),
                               nprocs=world_size, join=True, start_method="spawn")
        except mp.ProcessRaisedException:
            pass  # the per-rank files below say which rank failed and why
        except mp.ProcessExitedException as err:
            raise RankFailed(f"a rank exited abnormally: {err}") from None
        results, failures = [], []
        for rank in range(world_size):
            path = Path(out_dir) / f"rank{rank}.pt"
            if not path.exists():
                failures.append(f"rank {rank}: no result (killed or hung)")
                continue
            record = torch.load(path, weights_only=False)
            if record["ok"]:
                results.append(record["value"])
            else:
                failures.append(f"rank {rank} failed:\n{record['error']}")
        if failures:
            raise RankFailed("\n".join(failures))
        return results
