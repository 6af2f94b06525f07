"""Who this process is: join the process group a launcher (torchrun) described in the environment."""
from __future__ import annotations

import datetime as dt
import os

import torch
import torch.distributed as dist


def launched_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(timeout_s: float = 600.0) -> str:
    """Join the process group when launched with several ranks; returns the launcher's name.

    Uses gloo on CPU and nccl (rccl on ROCm) when GPUs are visible, with the device picked by
    LOCAL_RANK.
    """
    if launched_world_size() == 1 or dist.is_initialized():
        return "single-process" if not dist.is_initialized() else "torchrun"
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl"
    dist.init_process_group(backend, timeout=dt.timedelta(seconds=timeout_s))
    return "torchrun"


def broadcast_object(value):
    """Rank 0's value on every rank (e.g. a timestamped run directory); identity on one process."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
