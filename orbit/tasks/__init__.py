"""Tasks wire data + model + loss + evaluation for the one trainer; looked up by name."""
from __future__ import annotations

from typing import Callable

TASKS: dict[str, Callable] = {}


def register_task(name: str):
    """Class decorator: make a task constructible as `build_task(name, cfg)`."""
    def decorator(cls):
        if name in TASKS:
            raise ValueError(f"task {name!r} is registered twice")
        TASKS[name] = cls
        return cls
    return decorator


def build_task(cfg):
    from orbit.tasks import pretrain  # noqa: F401  (registers its task)

    if cfg.task not in TASKS:
        raise ValueError(f"unknown task {cfg.task!r}; valid tasks: {sorted(TASKS)}")
    return TASKS[cfg.task](cfg)
