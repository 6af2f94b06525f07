"""One training loop for every model: the task supplies model, batches, loss and evaluation.

The loop owns what every run needs and no task should re-implement: AdamW + warmup/cosine,
gradient accumulation and clipping, fp32 or bf16 autocast, activation checkpointing, periodic
evaluation, logging, and atomic checkpoints holding everything needed to continue the exact same
run (model, optimizer, scheduler, RNG states, the loader's position and the skipped-step count).

Faults it survives:
- SIGTERM / SIGUSR1 (orbit/train/signals.py): at the next step boundary every rank agrees, a
  checkpoint is saved and `Preempted` exits the process with code 75; `--resume auto` continues.
- A NaN/Inf loss or gradient norm (both are global: the loss is averaged over the data ranks and
  the norm covers every shard, so every rank takes the same decision): `train.nonfinite=stop`
  raises `NonFiniteError` naming the step; `skip` discards that step's gradients (no optimizer
  update) and counts it, and more than `train.max_skipped_steps` such steps raise `NonFiniteError`.
  A skipped step still counts as a step: its batches are consumed, the LR schedule advances (the LR
  stays a function of the step number) and its row in metrics.csv shows the non-finite values.
- Checkpoints may be written asynchronously (`train.async_checkpoint`): at most one in flight,
  published when every rank's write finished, waited for before the run ends or stops.
"""
from __future__ import annotations

import contextlib
import math
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
from orbit.train.signals import Preempted, StopSignals, any_rank
from orbit.train.watchdog import Progress


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
    skipped_steps: int = 0  # optimizer updates discarded for a non-finite loss or gradient


class NonFiniteError(RuntimeError):
    """The loss or the gradients became NaN or Inf (train.nonfinite=stop), or too many steps were
    skipped for it (train.nonfinite=skip); training stops instead of silently continuing."""


class Trainer:
    """Runs `cfg.max_steps` optimizer steps of `task`, logging to and checkpointing in `run_dir`."""

    def __init__(self, task: TrainTask, cfg, run_dir: Path,
                 build_engine: Callable[..., Any] | None = None, progress: Progress | None = None):
        """`build_engine(model, make_optimizer=...)` places the model on this rank's layout (default:
        one process) and builds the optimizer when its engine needs it (FSDP after sharding, DeepSpeed
        before wrapping); the engine then owns the optimizer step and the checkpoint format.
        `progress` is marked at fixed points of every step, eval and save (read by a `Watchdog`)."""
        self.task, self.cfg, self.run_dir = task, cfg, Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.progress = progress if progress is not None else Progress()
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
        self._saved_step: int | None = None  # the same on every rank, unlike a look at the file system
        self._check_engine_supports(cfg)
        self._device = next(iter(self.engine.parameters())).device

    def _check_engine_supports(self, cfg) -> None:
        kind = type(self.engine).__name__
        if cfg.async_checkpoint and not self.engine.supports_async_checkpoint:
            raise ValueError(f"train.async_checkpoint=true is not supported by the {kind} engine (it writes its "
                             "checkpoints synchronously); set train.async_checkpoint=false")
        if cfg.nonfinite == "skip" and not self.engine.grad_norm_before_step:
            raise ValueError(f"train.nonfinite=skip is not supported by the {kind} engine: it applies the update "
                             "inside its own step, before the gradient norm is known, so a non-finite update "
                             "cannot be discarded; use train.nonfinite=stop")

    def _make_optimizer(self, parts: list[nn.Module]) -> torch.optim.Optimizer:
        return build_optimizer(parts, self.cfg.lr, self.cfg.weight_decay, tuple(self.cfg.betas))

    # ------------------------------------------------------------------ checkpoints

    def _replicated_state(self) -> dict[str, Any]:
        """Small state, the same on every rank, saved beside the sharded model and optimizer."""
        return {"step": self.state.step, "skipped_steps": self.state.skipped_steps,
                "scheduler": self.scheduler.state_dict(), "loader": self.batches.state_dict(),
                "rng": ckpt.rng_state()}

    def save(self, wait: bool = True) -> Path:
        """Collective: every rank writes its shards; the directory appears only when complete.

        With train.async_checkpoint and `wait=False` the write continues in the background (the
        previous one is finished first) and `_checkpoint_published` reports it later.
        """
        path = ckpt.checkpoint_path(self.ckpt_dir, self.state.step)
        self.progress.mark(self.state.step, "checkpoint")
        self._saved_step = self.state.step
        asynchronous = self.cfg.async_checkpoint and not wait
        self._checkpoint_published(self.engine.finish_checkpoint(wait=True))
        self._checkpoint_published(self.engine.save_checkpoint(path, self._replicated_state(),
                                                               asynchronous=asynchronous))
        self.progress.mark(self.state.step, "train")
        return path

    def _checkpoint_published(self, path: Path | None) -> None:
        if path is not None and self.engine.is_main:
            ckpt.prune_checkpoints(self.ckpt_dir, self.cfg.keep_last)
            log.info("saved checkpoint %s", path)

    def load(self, path: Path) -> None:
        """Collective: resume from a checkpoint written on any layout (DeepSpeed: the same layout)."""
        self.progress.mark(self.state.step, "checkpoint")
        state = self.engine.load_checkpoint(path)
        self.scheduler.load_state_dict(state["scheduler"])
        self.batches.load_state_dict(state["loader"])
        ckpt.set_rng_state(state["rng"])
        self.state.step = state["step"]
        self.state.skipped_steps = state.get("skipped_steps", 0)
        self._saved_step = self.state.step
        self.progress.mark(self.state.step, "train")
        log.info("resumed from %s at step %d", path, self.state.step)

    # ------------------------------------------------------------------ loop

    def _autocast(self):
        if self.cfg.precision == "bf16":
            device_type = next(iter(self.engine.parameters())).device.type
            return torch.autocast(device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _optimizer_step(self, batch_iter) -> tuple[float, float, int]:
        """One optimizer step over `grad_accum_steps` micro-batches (or a skipped one, see module doc).

        Returns (loss averaged over micro-batches and data ranks, grad norm, global samples).
        """
        step = self.state.step + 1
        total_loss = torch.zeros(())
        samples = 0
        accum = self.cfg.grad_accum_steps
        for _ in range(accum):
            self.progress.mark(step)
            batch = next(batch_iter)
            self.progress.mark(step)
            inputs, target = self.task.model_inputs(batch), self.task.target(batch)
            with self._autocast():
                loss = self.engine.forward_backward(inputs, target, self.task.loss_fn, scale=1.0 / accum)
            total_loss += loss.float().cpu() / accum
            samples += len(target) * self.engine.dp_size
        loss = self.engine.mean_over_data_ranks(total_loss).item()
        if self.engine.grad_norm_before_step:
            grad_norm = self.engine.clip_gradients(self.cfg.grad_clip)
            if self._update_is_finite(step, loss, grad_norm):
                self.engine.apply_gradients()
            else:
                self.engine.discard_gradients()
        else:  # DeepSpeed: the norm is known only once the update is applied (nonfinite=stop only)
            self._update_is_finite(step, loss, None)
            grad_norm = self.engine.optimizer_step(self.cfg.grad_clip)
            self._update_is_finite(step, loss, grad_norm, applied=True)
        self.scheduler.step()
        self.progress.mark(step)
        return loss, grad_norm, samples

    def _update_is_finite(self, step: int, loss: float, grad_norm: float | None, applied: bool = False) -> bool:
        """False if this step's update must be skipped; raises NonFiniteError when the run must stop."""
        bad = [f"{name} is {value}" for name, value in (("loss", loss), ("gradient norm", grad_norm))
               if value is not None and not math.isfinite(value)]
        if not bad:
            return True
        what = " and ".join(bad)
        if applied:
            raise NonFiniteError(f"{what} at step {step}; the update was already applied by the engine, so the "
                                 f"model is no longer usable: stopping (resume from the last checkpoint)")
        if self.cfg.nonfinite == "stop":
            raise NonFiniteError(f"{what} at step {step}; stopping (train.nonfinite=stop; train.nonfinite=skip "
                                 "would skip such steps)")
        self.state.skipped_steps += 1
        if self.state.skipped_steps > self.cfg.max_skipped_steps:
            raise NonFiniteError(f"{what} at step {step}: {self.state.skipped_steps} steps skipped so far, more "
                                 f"than train.max_skipped_steps={self.cfg.max_skipped_steps}; stopping")
        log.warning("%s at step %d: update skipped (%d of at most %d skipped steps)", what, step,
                    self.state.skipped_steps, self.cfg.max_skipped_steps)
        return False

    def fit(self, logger: RunLogger) -> dict[str, Any]:
        """Train to `max_steps`; returns the final evaluation (empty if the task evaluates nothing).

        Raises `Preempted` (exit code 75) after saving a checkpoint when SIGTERM or SIGUSR1 arrived.
        """
        with StopSignals() as signals:
            try:
                self._train_loop(logger, signals)
            finally:
                self._checkpoint_published(self.engine.finish_checkpoint(wait=True))
        if self._saved_step != self.state.step:
            self.save()
        return self._evaluate(logger)

    def _train_loop(self, logger: RunLogger, signals: StopSignals) -> None:
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
                logger.log_scalars("train", {"skipped_steps": self.state.skipped_steps}, self.state.step)
                window_loss, window_samples, window_steps = 0.0, 0, 0
                window_start = time.perf_counter()
            if cfg.eval_every and self.state.step % cfg.eval_every == 0 and self.state.step < cfg.max_steps:
                self._evaluate(logger)
            if cfg.ckpt_every and self.state.step % cfg.ckpt_every == 0:
                self.save(wait=False)
            else:
                self._checkpoint_published(self.engine.finish_checkpoint(wait=False))
            if any_rank(signals.received is not None, self._device):
                self._stop_on_signal(signals.received)

    def _stop_on_signal(self, received: str | None) -> None:
        """Every rank gets here at the same step (`any_rank`); `received` is None on ranks whose
        signal has not arrived yet."""
        self._checkpoint_published(self.engine.finish_checkpoint(wait=True))
        path = ckpt.checkpoint_path(self.ckpt_dir, self.state.step)
        if self._saved_step != self.state.step:
            self.save()
        message = (f"stopping at step {self.state.step} on {received or 'a signal to another rank'}: checkpoint "
                   f"{path} saved; exit code 75; continue with --resume auto")
        log.warning(message)
        raise Preempted(message)

    def _evaluate(self, logger: RunLogger) -> dict[str, Any]:
        self.progress.mark(self.state.step, "eval")
        self.engine.train(False)
        with torch.no_grad(), self._autocast():
            results = self.task.evaluate(self.engine, self.state.step)
        self.engine.train(True)
        self.progress.mark(self.state.step, "train")
        scalars = {k: v for k, v in results.get("scalars", {}).items()}
        logger.log_scalars("eval", scalars, self.state.step)
        return results
