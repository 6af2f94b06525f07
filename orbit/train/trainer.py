"""One training loop for every model: the task supplies model, batches, loss and evaluation.

The loop owns what every run needs and no task should re-implement: AdamW + warmup/cosine,
gradient accumulation and clipping, fp32 or bf16 autocast, activation checkpointing, periodic
evaluation, logging, and atomic checkpoints holding everything needed to continue the exact same
run (model, optimizer, scheduler, RNG states and the loader's position).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import nn

from orbit.parallel.activation_checkpoint import apply_activation_checkpointing
from orbit.parallel.engine import LocalEngine
from orbit.train import checkpoint as ckpt
from orbit.train.logging import RunLogger, log
from orbit.train.optim import build_optimizer, warmup_cosine


class ResumableBatches(Protocol):
    """An endless iterable of batches whose position can be saved and restored."""

    def __iter__(self): ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class TrainTask(Protocol):
    """What a task gives the trainer: batch-first tensors only, so any parallel layout (pipeline
    microbatches included) can split them. `evaluate` gets the engine to run forward passes."""

    def build_model(self) -> nn.Module: ...
    def train_batches(self, dp_rank: int, dp_size: int) -> ResumableBatches: ...
    def model_inputs(self, batch: Any) -> tuple: ...
    def target(self, batch: Any) -> torch.Tensor: ...
    def loss_fn(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...
    def evaluate(self, engine: Any, step: int) -> dict[str, Any]: ...


@dataclass
class TrainState:
    step: int = 0


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or Inf; training stops instead of silently continuing."""


class Trainer:
    """Runs `cfg.max_steps` optimizer steps of `task`, logging to and checkpointing in `run_dir`."""

    def __init__(self, task: TrainTask, cfg, run_dir: Path,
                 build_engine: Callable[..., Any] | None = None):
        """`build_engine(model, make_optimizer=...)` places the model on this rank's layout (default:
        one process) and builds the optimizer when its engine needs it (FSDP after sharding, DeepSpeed
        before wrapping); the engine then owns the optimizer step and the checkpoint format."""
        self.task, self.cfg, self.run_dir = task, cfg, Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        torch.manual_seed(cfg.seed)
        model = task.build_model()
        if build_engine is None:
            if cfg.activation_checkpointing:
                apply_activation_checkpointing(model)
            build_engine = LocalEngine
        self.engine = build_engine(model, make_optimizer=self._make_optimizer)
        self.optimizer = self.engine.optimizer
        self.scheduler = warmup_cosine(self.optimizer, cfg.warmup_steps, cfg.max_steps, cfg.lr, cfg.min_lr)
        self.batches = task.train_batches(self.engine.dp_rank, self.engine.dp_size)
        self.state = TrainState()

    def _make_optimizer(self, parts: list[nn.Module]) -> torch.optim.Optimizer:
        return build_optimizer(parts, self.cfg.lr, self.cfg.weight_decay, tuple(self.cfg.betas))

    # ------------------------------------------------------------------ checkpoints

    def _replicated_state(self) -> dict[str, Any]:
        """Small state, the same on every rank, saved beside the sharded model and optimizer."""
        return {"step": self.state.step, "scheduler": self.scheduler.state_dict(),
                "loader": self.batches.state_dict(), "rng": ckpt.rng_state()}

    def save(self) -> Path:
        """Collective: every rank writes its shards; the directory appears only when complete."""
        path = ckpt.checkpoint_path(self.ckpt_dir, self.state.step)
        self.engine.save_checkpoint(path, self._replicated_state())
        if self.engine.is_main:
            ckpt.prune_checkpoints(self.ckpt_dir, self.cfg.keep_last)
            log.info("saved checkpoint %s", path)
        return path

    def load(self, path: Path) -> None:
        """Collective: resume from a checkpoint written on any layout (DeepSpeed: the same layout)."""
        state = self.engine.load_checkpoint(path)
        self.scheduler.load_state_dict(state["scheduler"])
        self.batches.load_state_dict(state["loader"])
        ckpt.set_rng_state(state["rng"])
        self.state.step = state["step"]
        log.info("resumed from %s at step %d", path, self.state.step)

    # ------------------------------------------------------------------ loop

    def _autocast(self):
        if self.cfg.precision == "bf16":
            device_type = next(iter(self.engine.parameters())).device.type
            return torch.autocast(device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _optimizer_step(self, batch_iter) -> tuple[float, float, int]:
        """One optimizer step over `grad_accum_steps` micro-batches.

        Returns (loss averaged over micro-batches and data ranks, grad norm, global samples).
        """
        total_loss = torch.zeros(())
        samples = 0
        accum = self.cfg.grad_accum_steps
        for _ in range(accum):
            batch = next(batch_iter)
            inputs, target = self.task.model_inputs(batch), self.task.target(batch)
            with self._autocast():
                loss = self.engine.forward_backward(inputs, target, self.task.loss_fn, scale=1.0 / accum)
            total_loss += loss.float().cpu() / accum
            samples += len(target) * self.engine.dp_size
        total_loss = self.engine.mean_over_data_ranks(total_loss)
        if not torch.isfinite(total_loss):
            raise NonFiniteLossError(f"loss is {total_loss.item()} at step {self.state.step + 1}; stopping")
        grad_norm = self.engine.optimizer_step(self.cfg.grad_clip)  # clips, steps, zeroes the gradients
        self.scheduler.step()
        return total_loss.item(), grad_norm, samples

    def fit(self, logger: RunLogger) -> dict[str, Any]:
        """Train to `max_steps`; returns the final evaluation (empty if the task evaluates nothing)."""
        cfg = self.cfg
        batch_iter = iter(self.batches)
        self.engine.train()
        window_loss, window_samples, window_start = 0.0, 0, time.perf_counter()
        window_steps = 0
        while self.state.step < cfg.max_steps:
            step_start = time.perf_counter()
            loss, grad_norm, samples = self._optimizer_step(batch_iter)
            self.state.step += 1
            window_loss += loss
            window_samples += samples
            window_steps += 1
            logger.advance(1, loss=loss)
            if self.state.step % cfg.log_every == 0 or self.state.step == cfg.max_steps:
                elapsed = time.perf_counter() - window_start
                logger.log_step({
                    "step": self.state.step, "loss": window_loss / window_steps,
                    "lr": self.scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                    "samples_per_s": window_samples / elapsed,
                    "step_time_s": time.perf_counter() - step_start,
                })
                window_loss, window_samples, window_steps = 0.0, 0, 0
                window_start = time.perf_counter()
            if cfg.eval_every and self.state.step % cfg.eval_every == 0 and self.state.step < cfg.max_steps:
                self._evaluate(logger)
            if cfg.ckpt_every and self.state.step % cfg.ckpt_every == 0:
                self.save()
        if not ckpt.checkpoint_path(self.ckpt_dir, self.state.step).exists():
            self.save()
        return self._evaluate(logger)

    def _evaluate(self, logger: RunLogger) -> dict[str, Any]:
        self.engine.train(False)
        with torch.no_grad(), self._autocast():
            results = self.task.evaluate(self.engine, self.state.step)
        self.engine.train(True)
        scalars = {k: v for k, v in results.get("scalars", {}).items()}
        logger.log_scalars("eval", scalars, self.state.step)
        return results
