"""Run a task end to end in a run directory: checks, config, training, summary, plots."""
from __future__ import annotations

import datetime as dt
import functools
import platform
import socket
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from orbit import __version__
from orbit.config import RunConfig, save_config
from orbit.parallel.checkpoint import is_complete
from orbit.parallel.env import broadcast_object, init_distributed
from orbit.parallel.parallelize import build_engine
from orbit.tasks import build_task
from orbit.train import checkpoint as ckpt
from orbit.train.logging import RunLogger, log, setup_console_logging, write_json
from orbit.train.trainer import Trainer


def default_run_dir(cfg: RunConfig) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.name}-{stamp}"


def resolve_resume(run_dir: Path, resume: str | None) -> Path | None:
    """Which checkpoint to start from; refuses to train over another run's checkpoints.

    `resume` is None (fresh run), "auto" (newest complete checkpoint in the run dir, if any) or
    a checkpoint path.
    """
    ckpt_dir = run_dir / "checkpoints"
    existing = ckpt.latest_checkpoint(ckpt_dir)
    if resume is None:
        if existing is not None:
            raise FileExistsError(
                f"run directory {str(run_dir)!r} already holds checkpoint {existing.name}; pass "
                f"--resume auto to continue that run, or choose another --run-dir")
        return None
    if resume == "auto":
        return existing
    path = Path(resume)
    if not is_complete(path):
        raise FileNotFoundError(f"--resume {resume!r} is not a complete checkpoint directory "
                                f"(checkpoints/step_<8-digit step> in a run directory), or use --resume auto")
    return path


def run_info(cfg: RunConfig, launcher: str) -> dict[str, Any]:
    """What a person reading the run directory later needs to know about where it ran."""
    return {
        "orbit_version": __version__, "torch_version": torch.__version__,
        "python": platform.python_version(), "host": socket.gethostname(),
        "launcher": launcher, "world_size": dist.get_world_size() if dist.is_initialized() else 1,
        "parallel": {k: v for k, v in cfg.parallel.__dict__.items()},
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(), "config_hash": cfg.hash(),
        "started": dt.datetime.now().isoformat(timespec="seconds"),
    }


def run_training(cfg: RunConfig, run_dir: Path | None = None, resume: str | None = None) -> dict[str, Any]:
    """Train `cfg.task` and evaluate it; returns the summary that is written to summary.json."""
    setup_console_logging()
    launcher = init_distributed()
    is_main = not dist.is_initialized() or dist.get_rank() == 0
    run_dir = Path(broadcast_object(str(run_dir) if run_dir is not None else str(default_run_dir(cfg))))
    start_from = resolve_resume(run_dir, resume)
    task = build_task(cfg)  # opens and checks the data before any directory is written
    info = run_info(cfg, launcher)
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        write_json(run_dir / "run_info.json", info)
        log.info("run %s | task %s | config %s | torch %s | %s, world %d, parallel %s", run_dir, cfg.task,
                 info["config_hash"], info["torch_version"], launcher, info["world_size"], info["parallel"])

    engine = functools.partial(build_engine, parallel_cfg=cfg.parallel, loss_fn=task.loss_fn,
                               precision=cfg.train.precision,
                               activation_checkpointing=cfg.train.activation_checkpointing,
                               batch_size=cfg.data.batch_size, grad_clip=cfg.train.grad_clip,
                               grad_accum_steps=cfg.train.grad_accum_steps)
    trainer = Trainer(task, cfg.train, run_dir, build_engine=engine)
    if start_from is not None:
        trainer.load(start_from)
    logger = RunLogger(run_dir, resumed_step=trainer.state.step, total_steps=cfg.train.max_steps,
                       enabled=is_main)
    try:
        results = trainer.fit(logger)
    finally:
        logger.close()
    summary = {"step": trainer.state.step, "config_hash": info["config_hash"], **results}
    if is_main:
        write_json(run_dir / "summary.json", summary)
        task.report(summary, run_dir)
    return summary
