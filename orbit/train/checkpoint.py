"""Which checkpoints a run directory holds, and the RNG state that goes into them.

Checkpoints are distributed (DCP) directories `checkpoints/step_<8-digit step>/` (e.g. `step_00000400`) written atomically by
`orbit.parallel.checkpoint.save_distributed` (one process is a world of one), so any checkpoint
resumes on any layout. Only complete directories with that exact name count: a half-written
`*.tmp-*` directory is never picked up by `--resume auto`.
"""
from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from orbit.parallel.checkpoint import EXTRA_FILE, is_complete

CKPT_PATTERN = re.compile(r"^step_(\d{8})$")
BEST_PATTERN = re.compile(r"^best_(\d{8})$")  # train.select_best: the state of a phase's best step so far


def checkpoint_path(ckpt_dir: Path, step: int) -> Path:
    return Path(ckpt_dir) / f"step_{step:08d}"


def step_of(path: Path) -> int:
    """The step a checkpoint directory `step_<8 digits>` was written at."""
    name = Path(path).name
    if not (name.startswith("step_") and name[5:].isdigit()):
        raise ValueError(f"checkpoint directory {str(path)!r} is not named step_<8-digit step>")
    return int(name[5:])


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if CKPT_PATTERN.match(p.name) and is_complete(p)]
    return sorted(found, key=lambda p: int(CKPT_PATTERN.match(p.name).group(1)))


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    found = list_checkpoints(ckpt_dir)
    return found[-1] if found else None


def prune_checkpoints(ckpt_dir: Path, keep_last: int) -> None:
    for old in list_checkpoints(ckpt_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def best_state_path(ckpt_dir: Path, step: int) -> Path:
    """Where `train.select_best` keeps the state of step `step` (same format as a checkpoint; never
    picked up by `--resume auto`)."""
    return Path(ckpt_dir) / f"best_{step:08d}"


def prune_best_states(ckpt_dir: Path, keep: set[int]) -> None:
    """Remove best-state directories except those of `keep` and those a complete checkpoint names as
    its phase's best (`best_dir_step` in its extra state), so every kept checkpoint still resumes."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return
    keep = set(keep)
    for path in list_checkpoints(ckpt_dir):
        keep.add(torch.load(path / EXTRA_FILE, weights_only=False).get("best_dir_step"))
    for path in ckpt_dir.iterdir():
        match = BEST_PATTERN.match(path.name)
        if match and int(match.group(1)) not in keep:
            shutil.rmtree(path, ignore_errors=True)


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
