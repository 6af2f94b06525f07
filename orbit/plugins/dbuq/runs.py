"""A trained run directory back as (task, model): the task rebuilt from the run's own config.yaml (data,
split and normalization as trained), the weights from its newest complete checkpoint, in eval mode on
the CPU. No process group is needed."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from orbit.config import load_config
from orbit.parallel.checkpoint import consolidate
from orbit.registry import build_task
from orbit.train.checkpoint import latest_checkpoint


def load_run(run_dir: str | Path, task: str, overrides: list[str] | None = None) -> tuple[object, nn.Module]:
    run_dir = Path(run_dir)
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"{str(config)!r} not found: give the --run-dir of a finished `orbit train` run "
                                f"of task {task!r}")
    cfg = load_config(config, overrides or [])
    if cfg.task != task:
        raise ValueError(f"run {str(run_dir)!r} is a {cfg.task!r} run; this command needs a {task!r} run")
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    if checkpoint is None:
        raise FileNotFoundError(f"run {str(run_dir)!r} holds no complete checkpoint under checkpoints/ (did it finish?)")
    built = build_task(cfg)
    model = built.build_model()
    model.load_state_dict(consolidate(checkpoint))
    return built, model.eval()
