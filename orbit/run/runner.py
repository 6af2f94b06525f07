"""Run a task end to end in a run directory: checks, config, training, summary, plots.

At start every run logs, and records in `run_info.json`, where and how it runs: the launcher, the
world size, which host and device each rank has, the mesh, library versions and the config hash.
Training runs under a `Watchdog` when there are several ranks, so a dead or hung rank ends the job
within `parallel.heartbeat_timeout_s`, naming that rank.
"""
from __future__ import annotations

import datetime as dt
import importlib.metadata
import platform
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from orbit import __version__
from orbit.config import RunConfig, save_config
from orbit.parallel.checkpoint import is_complete
from orbit.parallel.env import LaunchInfo, broadcast_object, init_distributed
from orbit.models.registry import family_of
from orbit.parallel.parallelize import build_engine
from orbit.parallel.plans import ParallelPlan, data_parallel_only
from orbit.registry import build_task
from orbit.train import checkpoint as ckpt
from orbit.train.logging import RunLogger, log, setup_console_logging, write_json
from orbit.train.trainer import Trainer
from orbit.train.watchdog import Progress, Watchdog

VERSIONED_PACKAGES = ("torch", "numpy", "xarray", "zarr", "deepspeed", "mpi4py")


def parallel_plan(model: nn.Module) -> ParallelPlan:
    """The parallel plan of `model`'s registered family (data parallelism only if it declares none)."""
    family = family_of(model)
    return family.plan if family.plan is not None else data_parallel_only(family.name)


def engine_builder(cfg: RunConfig, device: str | None, *, activation_checkpointing: bool | None = None):
    """`build(model, loss_fn=..., make_optimizer=None)` -> this rank's engine for `model` on the run's
    layout, with the plan of the model's family."""
    t = cfg.train
    checkpointing = t.activation_checkpointing if activation_checkpointing is None else activation_checkpointing

    def build(model: nn.Module, *, loss_fn, make_optimizer=None):
        return build_engine(model, cfg.parallel, plan=parallel_plan(model), loss_fn=loss_fn, precision=t.precision,
                            activation_checkpointing=checkpointing, batch_size=cfg.data.batch_size,
                            make_optimizer=make_optimizer, grad_clip=t.grad_clip, grad_accum_steps=t.grad_accum_steps,
                            device=device or "cpu")

    return build


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


def package_versions() -> dict[str, str]:
    """Versions of the packages a run's numbers depend on (optional ones only when installed)."""
    versions = {"orbit": __version__, "python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def engine_mesh(engine) -> dict[str, Any]:
    """The engine kind and its mesh axes with their sizes (outermost first)."""
    mesh = getattr(engine, "mesh", None)
    if mesh is not None:
        axes = dict(zip(mesh.mesh_dim_names, mesh.mesh.shape))
    elif engine.distributed:  # DeepSpeed ZeRO: one data-parallel group of every rank
        axes = {"dp_shard": engine.dp_size}
    else:
        axes = {}
    return {"engine": type(engine).__name__, "axes": {name: int(size) for name, size in axes.items()}}


def rank_places(launch: LaunchInfo) -> list[dict[str, Any]]:
    """Host and device of every rank, indexed by rank (collective)."""
    mine = {"host": launch.host, "device": launch.device}
    if not dist.is_initialized():
        return [mine]
    places: list[dict[str, Any]] = [None] * dist.get_world_size()  # type: ignore[list-item]
    dist.all_gather_object(places, mine)
    return places


def run_info(cfg: RunConfig, launch: LaunchInfo, engine) -> dict[str, Any]:
    """What a person reading the run directory later needs to know about where it ran (collective)."""
    return {
        "launcher": launch.launcher, "world_size": launch.world_size, "launch": launch.to_dict(),
        "mesh": engine_mesh(engine), "ranks": rank_places(launch), "versions": package_versions(),
        "parallel": dict(cfg.parallel.__dict__), "threads": torch.get_num_threads(),
        "config_hash": cfg.hash(), "started": dt.datetime.now().isoformat(timespec="seconds"),
    }


def _log_start(run_dir: Path, cfg: RunConfig, info: dict[str, Any]) -> None:
    hosts = sorted({place["host"] for place in info["ranks"]})
    devices = sorted({str(place["device"]) for place in info["ranks"]})
    log.info("run %s | task %s | config hash %s", run_dir, cfg.task, info["config_hash"])
    log.info("launcher %s | world size %d on %d host(s) %s | devices %s", info["launcher"], info["world_size"],
             len(hosts), ",".join(hosts[:4]) + (",..." if len(hosts) > 4 else ""), ",".join(devices))
    log.info("mesh %s %s | versions %s", info["mesh"]["engine"],
             " x ".join(f"{axis}={size}" for axis, size in info["mesh"]["axes"].items()) or "(one process)",
             " ".join(f"{name} {version}" for name, version in info["versions"].items()))


def run_training(cfg: RunConfig, run_dir: Path | None = None, resume: str | None = None) -> dict[str, Any]:
    """Train `cfg.task` and evaluate it; returns the summary that is written to summary.json.

    Raises `orbit.train.signals.Preempted` (a SystemExit with code 75) after saving a checkpoint
    when the job received SIGTERM or SIGUSR1.
    """
    setup_console_logging()
    launch = init_distributed(cfg.parallel.timeout_s)
    is_main = launch.rank == 0
    run_dir = Path(broadcast_object(str(run_dir) if run_dir is not None else str(default_run_dir(cfg))))
    start_from = resolve_resume(run_dir, resume)
    task = build_task(cfg)  # opens and checks the data before any directory is written

    progress = Progress()
    trainer = Trainer(task, cfg.train, run_dir, build_engine=engine_builder(cfg, launch.device), progress=progress)
    info = run_info(cfg, launch, trainer.engine)
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        write_json(run_dir / "run_info.json", info)
        _log_start(run_dir, cfg, info)

    with Watchdog(progress, cfg.parallel.heartbeat_timeout_s, launch.master_addr):
        if start_from is not None:
            trainer.load(start_from)
        logger = RunLogger(run_dir, resumed_step=trainer.state.step, total_steps=trainer.total_steps,
                           enabled=is_main)
        try:
            results = trainer.fit(logger)
        finally:
            logger.close()
    summary = {"step": trainer.state.step, "skipped_steps": trainer.state.skipped_steps,
               "config_hash": info["config_hash"], **results}
    if is_main:
        write_json(run_dir / "summary.json", summary)
        task.report(summary, run_dir)
    return summary
