"""A trained run directory back as (task, model), for the plug-in's commands (sample, compare,
verify): `orbit.run.evaluate`'s run loading with the task name checked."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from orbit.run.evaluate import find_checkpoint, load_trained, read_run_config


def load_run(run_dir: str | Path, task: str, overrides: list[str] | None = None) -> tuple[object, nn.Module]:
    """The run's task and its newest checkpoint's model."""
    return load_trained(read_run_config(run_dir, task, overrides), find_checkpoint(Path(run_dir), None))
