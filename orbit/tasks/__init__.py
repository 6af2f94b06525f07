"""Tasks wire data + model + loss + evaluation for the one trainer; looked up by name."""
from __future__ import annotations

import importlib
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


TASK_MODULES = ("pretrain", "forecast", "downscale", "elm_spinup")


def import_task_modules() -> None:
    """Import every task module once, so their tasks and option schemas are registered."""
    for name in TASK_MODULES:
        importlib.import_module(f"orbit.tasks.{name}")


def build_task(cfg):
    import_task_modules()
    if cfg.task not in TASKS:
        raise ValueError(f"unknown task {cfg.task!r}; valid tasks: {sorted(TASKS)}")
    return TASKS[cfg.task](cfg)
