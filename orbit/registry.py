"""The task registry and plug-in discovery.

A task registers itself with the schemas of the config sections it owns (`model`, `data`, `eval`,
`options`); the generic config (orbit/config.py) holds only what every run has and types those
sections through this registry. Tasks are found without a central list to edit:
- `orbit/tasks/` (the ORBIT tasks) and every package under `orbit/plugins/` are imported by
  `load_plugins()`, and each registers what it defines when imported;
- an installed package can add plug-ins through the entry-point group `orbit.plugins` (each entry
  point names a module to import).
This module imports nothing of orbit at import time, so config, tasks and plug-ins can all use it.
"""
from __future__ import annotations

import importlib
import logging
import importlib.metadata
import pkgutil
from dataclasses import dataclass
from typing import Any

ENTRY_POINT_GROUP = "orbit.plugins"


@dataclass(frozen=True)
class TaskEntry:
    """A registered task class and the dataclasses typing its config sections (None: no such section)."""

    name: str
    cls: type
    model: type | None = None
    data: type | None = None
    eval: type | None = None
    options: type | None = None

    def schema(self, section: str) -> type | None:
        return getattr(self, section)


TASKS: dict[str, TaskEntry] = {}
BROKEN_PLUGINS: dict[str, str] = {}  # plug-in module -> why it failed to import
_loaded = False


def register_task(name: str, *, model: type | None = None, data: type | None = None, eval: type | None = None,
                  options: type | None = None):
    """Class decorator: register a task (a `orbit.train.task.Task`) under `name` with the dataclasses
    of its `model:`, `data:`, `eval:` and `options:` config sections."""

    def decorator(cls: type) -> type:
        if name in TASKS:
            raise ValueError(f"task {name!r} is registered twice (by {TASKS[name].cls.__module__} and {cls.__module__})")
        TASKS[name] = TaskEntry(name, cls, model, data, eval, options)
        return cls

    return decorator


def load_plugins() -> None:
    """Import the ORBIT tasks, every package under `orbit/plugins/` and the `orbit.plugins` entry
    points, once, so that everything they define is registered.

    A plug-in that fails to import does not stop runs of the other tasks: it is logged, recorded in
    `BROKEN_PLUGINS` and named when its task is asked for."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    importlib.import_module("orbit.tasks")
    plugins = importlib.import_module("orbit.plugins")
    names = [module.name for module in pkgutil.iter_modules(plugins.__path__, prefix="orbit.plugins.")]
    names += [entry_point.value for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)]
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as error:  # noqa: BLE001  (any error inside a plug-in's import)
            BROKEN_PLUGINS[name] = f"{type(error).__name__}: {error}"
            logging.getLogger("orbit").warning("plug-in %s failed to import and is skipped: %s", name,
                                               BROKEN_PLUGINS[name])


def get_task(name: str) -> TaskEntry:
    load_plugins()
    if name not in TASKS:
        broken = "".join(f"; plug-in {module} failed to import ({why})" for module, why in BROKEN_PLUGINS.items())
        raise ValueError(f"unknown task {name!r}; registered tasks: {sorted(TASKS)}{broken}")
    return TASKS[name]


def build_task(cfg) -> Any:
    """The task object of a run config (opens and checks its data)."""
    return get_task(cfg.task).cls(cfg)
