"""`orbit evaluate`: score a trained run's checkpoint and write its predictions as an xarray dataset.

The run is rebuilt from its own `config.yaml` (so the data, model and metrics are those it was
trained with), on whatever layout this launch has: the checkpoint is resharded on load.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
import xarray as xr
from torch import nn

from orbit.atomic import write_atomically
from orbit.config import RunConfig, load_config
from orbit.parallel.checkpoint import is_complete, load_distributed
from orbit.parallel.mesh import parallel_dims_from
from orbit.parallel.env import init_distributed
from orbit.registry import build_task
from orbit.run.runner import engine_builder
from orbit.train import checkpoint as ckpt
from orbit.train.logging import log, setup_console_logging, write_json

PREDICTION_FORMATS = {"zarr": ".zarr", "netcdf": ".nc"}


def find_checkpoint(run_dir: Path, checkpoint: str | Path | None) -> Path:
    """The given checkpoint, or the newest complete one of the run."""
    if checkpoint is not None:
        path = Path(checkpoint)
        if not is_complete(path):
            raise FileNotFoundError(f"--checkpoint {str(path)!r} is not a complete checkpoint directory")
        return path
    latest = ckpt.latest_checkpoint(run_dir / "checkpoints")
    if latest is None:
        raise FileNotFoundError(f"run directory {str(run_dir)!r} holds no complete checkpoint under checkpoints/")
    return latest


def read_run_config(run_dir: str | Path, task: str, overrides: list[str] | None = None) -> RunConfig:
    """The config.yaml of a trained `task` run, without its pretrained init (weights come from the run)."""
    config = Path(run_dir) / "config.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"{str(config)!r} not found: give the run directory of a finished `orbit train` "
                                f"run of task {task!r}")
    cfg = load_config(config, [*(overrides or []), "finetune.init=null"])
    if cfg.task != task:
        raise ValueError(f"run {str(run_dir)!r} is a {cfg.task!r} run; this command needs a {task!r} run")
    return cfg


def load_trained(cfg: RunConfig, path: Path) -> tuple[Any, nn.Module]:
    """(task, model) of a run for single-process use (no engine, no process group): the task rebuilt
    from `cfg` (data, split and normalization as trained), the weights of checkpoint `path`
    (`find_checkpoint`), eval mode."""
    task = build_task(cfg)
    model = task.build_model()
    load_distributed(path, [model])
    return task, model.eval()


def write_predictions(dataset: xr.Dataset, path: Path) -> Path:
    """zarr or netCDF by suffix, written atomically: a reader never sees half a file."""
    if path.suffix not in PREDICTION_FORMATS.values():
        raise ValueError(f"predictions path {str(path)!r} must end in one of {list(PREDICTION_FORMATS.values())}")
    if path.suffix == ".zarr":
        return write_atomically(path, lambda tmp: dataset.to_zarr(tmp, mode="w", zarr_format=2, consolidated=True),
                                overwrite=True)
    return write_atomically(path, dataset.to_netcdf, overwrite=True)


def _fit_layout_to_launch(parallel, world_size: int) -> None:
    """Score on the run's layout when this launch can hold it; else on pure data parallelism (weights
    reshard on load, so a run trained on 8 ranks is scored on 1 without naming its degrees again)."""
    try:
        parallel_dims_from(parallel, world_size)
    except ValueError as error:
        log.info("the run's layout does not fit %d process(es) (%s): evaluating data parallel", world_size, error)
        parallel.dp_replicate, parallel.dp_shard, parallel.sp, parallel.tp, parallel.pp = 1, -1, 1, 1, 1


def run_evaluation(run_dir: str | Path, checkpoint: str | Path | None = None, out_dir: str | Path | None = None,
                   fmt: str = "zarr", overrides: list[str] | None = None) -> dict[str, Any]:
    """Evaluate `run_dir`'s checkpoint; writes evaluation.json, the task's report and predictions."""
    setup_console_logging()
    if fmt not in PREDICTION_FORMATS:
        raise ValueError(f"--format {fmt!r} is not valid; use one of {list(PREDICTION_FORMATS)}")
    run_dir = Path(run_dir)
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"{str(config)!r} not found: --run-dir must be a directory written by "
                                f"`orbit pretrain` or `orbit finetune`")
    # weights come from the checkpoint: no pretrained init, nothing frozen, an engine without optimizer
    # (DeepSpeed builds none without one, so its runs are scored on the torch engine of the same layout:
    # their checkpoints hold the full weights as DCP as well)
    cfg = load_config(config, [*(overrides or []), "finetune.init=null", "finetune.freeze=none",
                               "finetune.replace=[]"])
    if cfg.parallel.engine == "deepspeed":
        cfg.parallel.engine = "fsdp"
    path = find_checkpoint(run_dir, checkpoint)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "evaluation"
    launch = init_distributed(cfg.parallel.timeout_s)
    is_main = launch.rank == 0
    _fit_layout_to_launch(cfg.parallel, launch.world_size)
    task = build_task(cfg)
    engine = engine_builder(cfg, launch.device, activation_checkpointing=False)(task.build_model(), loss_fn=task.loss)
    step = engine.load_weights(path)["step"]
    log.info("evaluating %s (step %d) of task %s", path, step, cfg.task)
    engine.train(False)
    device_type = next(iter(engine.parameters())).device.type
    autocast = torch.autocast(device_type, dtype=torch.bfloat16) if cfg.train.precision == "bf16" \
        else contextlib.nullcontext()
    grad = contextlib.nullcontext() if task.evaluate_with_grad else torch.no_grad()
    with grad, autocast:
        summary = {"step": step, "checkpoint": str(path), **task.evaluate(engine, step)}
        predictions = task.predictions(engine)
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "evaluation.json", summary)
        task.report(summary, out_dir)
        if predictions is not None:
            written = write_predictions(predictions, out_dir / f"predictions{PREDICTION_FORMATS[fmt]}")
            log.info("wrote %s", written)
    return summary
