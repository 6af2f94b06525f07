"""One training loop for every model: the task supplies model, batches, loss and evaluation
(the contract: orbit/train/task.py).

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
- Phases (`Task.phases`): stages run one after the other, each with its own optimizer (over the
  modules it trains), LR schedule and loss; a phase starts when the previous one has done its steps,
  and a checkpoint holds the phase of its last step, so a run resumes inside any phase.
- Host syncs: the loss and gradient norm stay on the device and come to the host only on logging
  steps. Non-finite values are tracked on the device too: `nonfinite=stop` raises at the next logging
  step, evaluation or checkpoint (never saving past it), naming the first bad step; `nonfinite=skip`
  must decide before each update, so it reads them every step.
- Checkpoints may be written asynchronously (`train.async_checkpoint`): at most one in flight,
  published when every rank's write finished, waited for before the run ends or stops.
- Model selection (`train.select_best: KEY`, `train.select_mode: min|max`), as Lightning's
  ModelCheckpoint(monitor=KEY) + restoring it, or Keras's restore_best_weights: every
  `train.eval_every` steps and at the end of each phase the scalar KEY (`{phase}` in it: the phase's
  name) of the task's `validate` is compared with the phase's best; a better state is written like a
  checkpoint (atomically, any layout) to `checkpoints/best_<step>/`, and at the end of the phase the
  weights of its best step are loaded back. The best steps and values are part of every checkpoint,
  so a resumed run keeps them; the summary lists them under `selected`. The key is checked against
  a `validate` before the first step. The task's full `evaluate` runs once, after the restore.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from orbit.parallel.engine import LocalEngine
from orbit.train import checkpoint as ckpt
from orbit.train.logging import RunLogger, log, peak_memory_gb
from orbit.train.optim import build_optimizer, warmup_cosine
from orbit.train.signals import Preempted, StopSignals, any_rank
from orbit.train.task import Phase, Task
from orbit.train.watchdog import Progress


@dataclass
class TrainState:
    step: int = 0
    skipped_steps: int = 0  # optimizer updates discarded for a non-finite loss or gradient
    phase: int = 0  # index into the task's phases of the last step taken


class NonFiniteError(RuntimeError):
    """The loss or the gradients became NaN or Inf (train.nonfinite=stop), or too many steps were
    skipped for it (train.nonfinite=skip); training stops instead of silently continuing."""


class Trainer:
    """Runs the task's phases (default: one of `cfg.max_steps` steps), logging to and checkpointing in `run_dir`."""

    def __init__(self, task: Task, cfg, run_dir: Path,
                 build_engine: Callable[..., Any] | None = None, progress: Progress | None = None):
        """`build_engine(model, loss_fn=..., make_optimizer=...)` places the model on this rank's layout
        (default: one process) and builds the optimizer when its engine needs it (FSDP after sharding,
        DeepSpeed before wrapping); the engine then owns the optimizer step and the checkpoint format.
        `progress` is marked at fixed points of every step, eval and save (read by a `Watchdog`)."""
        self.task, self.cfg, self.run_dir = task, cfg, Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.progress = progress if progress is not None else Progress()
        self.phases = task.phases(cfg)
        self.phase_ends = [sum(p.steps for p in self.phases[:i + 1]) for i in range(len(self.phases))]
        self.total_steps = self.phase_ends[-1]
        self.state = TrainState()
        torch.manual_seed(cfg.seed)
        model = task.build_model()
        self.engine = (build_engine or LocalEngine)(model, loss_fn=self._loss, make_optimizer=self._make_optimizer)
        if len(self.phases) > 1 and not hasattr(self.engine, "set_optimizer"):
            raise ValueError(f"task {type(task).__name__} trains in {len(self.phases)} phases, which need a new "
                             f"optimizer per phase; the {type(self.engine).__name__} engine cannot swap its "
                             "optimizer: use parallel.engine=fsdp")
        self.scheduler = self._schedule()
        self.batches = task.train_batches(self.engine.dp_rank, self.engine.dp_size)
        self._saved_step: int | None = None  # the same on every rank, unlike a look at the file system
        self._check_engine_supports(cfg)
        self._device = next(iter(self.engine.parameters())).device
        self._first_bad_step = torch.zeros((), dtype=torch.long, device=self._device)  # 0: none yet
        self.flops_per_sample = task.train_flops_per_sample()
        self._best: dict[str, dict[str, Any]] = {}  # phase name -> {"metric", "value", "step"} (train.select_best)
        self._restored = False  # whether the current phase's best weights are back (its last step is done)

    @property
    def phase(self) -> Phase:
        return self.phases[self.state.phase]

    def _loss(self, output, batch) -> torch.Tensor:
        return (self.phase.loss or self.task.loss)(output, batch)

    def _check_engine_supports(self, cfg) -> None:
        kind = type(self.engine).__name__
        if cfg.async_checkpoint and not self.engine.supports_async_checkpoint:
            raise ValueError(f"train.async_checkpoint=true is not supported by the {kind} engine (it writes its "
                             "checkpoints synchronously); set train.async_checkpoint=false")
        if cfg.select_best and not hasattr(self.engine, "load_weights"):
            raise ValueError(f"train.select_best is not supported by the {kind} engine: it cannot load the best "
                             "step's weights back without its optimizer state; use parallel.engine=fsdp")
        if cfg.nonfinite == "skip" and not self.engine.grad_norm_before_step:
            raise ValueError(f"train.nonfinite=skip is not supported by the {kind} engine: it applies the update "
                             "inside its own step, before the gradient norm is known, so a non-finite update "
                             "cannot be discarded; use train.nonfinite=stop")

    def _make_optimizer(self, parts: list[nn.Module]) -> torch.optim.Optimizer:
        """AdamW over the parameters the current phase trains (all, with a single phase)."""
        phase, cfg = self.phase, self.cfg
        trained = [p for part in parts for name, p in part.named_parameters()
                   if phase.trains(name.replace("_checkpoint_wrapped_module.", ""))]
        if not trained:
            top_level = sorted({name.split(".")[0] for part in parts for name, _ in part.named_parameters()})
            raise ValueError(f"phase {phase.name!r} trains modules {list(phase.modules)}, which hold no parameters "
                             f"of this model (top-level modules: {top_level})")
        return build_optimizer(trained, cfg.lr if phase.lr is None else phase.lr,
                               cfg.weight_decay if phase.weight_decay is None else phase.weight_decay,
                               tuple(cfg.betas))

    def _schedule(self) -> torch.optim.lr_scheduler.LambdaLR:
        phase, cfg = self.phase, self.cfg
        lr = cfg.lr if phase.lr is None else phase.lr
        warmup = cfg.warmup_steps if phase.warmup_steps is None else phase.warmup_steps
        return warmup_cosine(self.engine.optimizer, warmup, phase.steps, lr, cfg.min_lr)

    def _enter_phase(self, index: int) -> None:
        """Make phase `index` current: its optimizer (fresh state) and LR schedule."""
        self.state.phase = index
        self._restored = False
        if len(self.phases) > 1:
            self.engine.set_optimizer(self._make_optimizer(self.engine.parts))
            self.scheduler = self._schedule()
            log.info("phase %d/%d %r: %d steps, training %s", index + 1, len(self.phases), self.phase.name,
                     self.phase.steps, list(self.phase.modules) or "all modules")

    def _phase_of_step(self, step: int) -> int:
        """The phase that took step `step` (0: the first phase)."""
        return next(i for i, end in enumerate(self.phase_ends) if step <= end)

    # ------------------------------------------------------------------ checkpoints

    def _replicated_state(self) -> dict[str, Any]:
        """Small state, the same on every rank, saved beside the sharded model and optimizer."""
        return {"step": self.state.step, "skipped_steps": self.state.skipped_steps, "phase": self.state.phase,
                "scheduler": self.scheduler.state_dict(), "loader": self.batches.state_dict(),
                "rng": ckpt.rng_state(), "best": {name: dict(best) for name, best in self._best.items()},
                "best_dir_step": self._unrestored_best_step()}

    def save(self, wait: bool = True) -> Path:
        """Collective: every rank writes its shards; the directory appears only when complete.

        With train.async_checkpoint and `wait=False` the write continues in the background (the
        previous one is finished first) and `_checkpoint_published` reports it later.
        """
        path = ckpt.checkpoint_path(self.ckpt_dir, self.state.step)
        self._raise_if_nonfinite()  # never save a model past a non-finite update
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
            if self.cfg.select_best:
                self._prune_best()
            log.info("saved checkpoint %s", path)

    def _prune_best(self) -> None:
        """Main rank: drop the best-state directories that neither a kept checkpoint nor the current phase needs."""
        current = self._unrestored_best_step()
        ckpt.prune_best_states(self.ckpt_dir, keep={current} if current is not None else set())

    def _unrestored_best_step(self) -> int | None:
        """The best step of the current phase until its weights are restored (then no directory is needed)."""
        if self._restored:
            return None
        return self._best.get(self.phase.name, {}).get("step")

    def load(self, path: Path) -> None:
        """Collective: resume from a checkpoint written on any layout (DeepSpeed: the same layout)."""
        self.progress.mark(self.state.step, "checkpoint")
        phase = self._phase_of_step(ckpt.step_of(path))
        if phase != self.state.phase:  # the optimizer must be the saved phase's before its state loads
            self._enter_phase(phase)
        state = self.engine.load_checkpoint(path)
        self.scheduler.load_state_dict(state["scheduler"])
        self.batches.load_state_dict(state["loader"])
        ckpt.set_rng_state(state["rng"])
        self.state.step = state["step"]
        self.state.skipped_steps = state.get("skipped_steps", 0)
        self._best = {name: dict(best) for name, best in state.get("best", {}).items()}
        self._restored = self.state.step == self.phase_ends[self.state.phase]  # saved after the restore
        self._saved_step = self.state.step
        self.progress.mark(self.state.step, "train")
        log.info("resumed from %s at step %d", path, self.state.step)

    # ------------------------------------------------------------------ loop

    def _autocast(self):
        if self.cfg.precision == "bf16":
            device_type = next(iter(self.engine.parameters())).device.type
            return torch.autocast(device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _optimizer_step(self, batch_iter) -> tuple[torch.Tensor, torch.Tensor, int, float]:
        """One optimizer step over `grad_accum_steps` micro-batches (or a skipped one, see module doc).

        Returns (loss averaged over micro-batches and data ranks, grad norm, both tensors on the
        device; global samples; seconds spent waiting for batches).
        """
        step = self.state.step + 1
        total_loss = torch.zeros((), device=self._device)
        samples, data_wait = 0, 0.0
        accum = self.cfg.grad_accum_steps
        for _ in range(accum):
            self.progress.mark(step)
            wait_start = time.perf_counter()
            batch = next(batch_iter)
            data_wait += time.perf_counter() - wait_start
            self.progress.mark(step)
            inputs = self.task.model_inputs(batch)
            with self._autocast():
                loss = self.engine.forward_backward(inputs, batch, scale=1.0 / accum)
            total_loss += loss.float() / accum
            samples += next(x.shape[0] for x in inputs if isinstance(x, torch.Tensor)) * self.engine.dp_size
        loss = self.engine.mean_over_data_ranks(total_loss)
        if self.engine.grad_norm_before_step:
            grad_norm = self.engine.clip_gradients(self.cfg.grad_clip)
            if self.cfg.nonfinite == "stop" or self._update_is_finite(step, float(loss), float(grad_norm)):
                self._track_nonfinite(step, loss, grad_norm)
                self.engine.apply_gradients()
            else:
                self.engine.discard_gradients()
        else:  # DeepSpeed: the norm is known only once the update is applied (nonfinite=stop only)
            self._update_is_finite(step, float(loss), None)
            grad_norm = self.engine.optimizer_step(self.cfg.grad_clip)
            self._update_is_finite(step, float(loss), float(grad_norm), applied=True)
        self.scheduler.step()
        self.progress.mark(step)
        return loss, grad_norm, samples, data_wait

    def _track_nonfinite(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """Remember (on the device, no host sync) the first step whose loss or gradient norm was not finite."""
        bad = ~(torch.isfinite(loss) & torch.isfinite(grad_norm.to(loss.device)))
        first = self._first_bad_step
        self._first_bad_step = torch.where(bad & (first == 0), torch.full_like(first, step), first)

    def _raise_if_nonfinite(self) -> None:
        """Host sync: stop (train.nonfinite=stop) if any step since the start was non-finite."""
        step = int(self._first_bad_step)
        if step:
            raise NonFiniteError(f"the loss or the gradient norm was not finite at step {step}; stopping "
                                 "(train.nonfinite=stop; train.nonfinite=skip would skip such steps)")

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
        """Train all phases; returns the final evaluation (empty if the task evaluates nothing).

        Raises `Preempted` (exit code 75) after saving a checkpoint when SIGTERM or SIGUSR1 arrived.
        """
        if self.cfg.select_best and self.state.step == 0:
            self._check_select_key(self._evaluate(logger, self.task.validate))
        with StopSignals() as signals:
            try:
                self._train_loop(logger, signals)
            finally:
                self._checkpoint_published(self.engine.finish_checkpoint(wait=True))
        self._raise_if_nonfinite()
        if self._saved_step != self.state.step:
            self.save()
        results = self._evaluate(logger, self.task.evaluate)
        if self._best:
            results["selected"] = {name: dict(best) for name, best in self._best.items()}
        return results

    # ------------------------------------------------------------------ model selection (train.select_best)

    def _select_key(self, phase: Phase) -> str:
        return self.cfg.select_best.format(phase=phase.name)

    def _check_select_key(self, results: dict[str, Any]) -> None:
        """Before the first step: every phase's key must be one of the task's evaluation scalars."""
        scalars = results.get("scalars", {})
        missing = {p.name: self._select_key(p) for p in self.phases if self._select_key(p) not in scalars}
        if missing:
            raise ValueError(f"train.select_best={self.cfg.select_best!r}: the task's evaluation has no scalar "
                             f"{sorted(set(missing.values()))} (phases {list(missing)}); its scalars are "
                             f"{sorted(scalars)}")

    def _consider(self, results: dict[str, Any]) -> None:
        """Keep this step's state if its selection metric beats the phase's best (every rank decides alike:
        rank 0's value counts)."""
        key, step = self._select_key(self.phase), self.state.step
        scalars = results.get("scalars", {})
        if key not in scalars:
            raise ValueError(f"train.select_best: the evaluation at step {step} has no scalar {key!r}; its scalars "
                             f"are {sorted(scalars)}")
        value = float(scalars[key])
        if dist.is_initialized():
            agreed = torch.tensor([value], dtype=torch.float64, device=self._device)
            dist.broadcast(agreed, 0)
            value = float(agreed)
        best = self._best.get(self.phase.name)
        better = math.isfinite(value) and (best is None or (value < best["value"] if self.cfg.select_mode == "min"
                                                              else value > best["value"]))
        if not better:
            return
        self._raise_if_nonfinite()
        self._checkpoint_published(self.engine.finish_checkpoint(wait=True))  # one write at a time
        self.progress.mark(step, "checkpoint")
        self.engine.save_checkpoint(ckpt.best_state_path(self.ckpt_dir, step), self._replicated_state())
        self.progress.mark(step, "train")
        self._best[self.phase.name] = {"metric": key, "value": value, "step": step}
        if self.engine.is_main:
            self._prune_best()

    def _restore_best(self) -> None:
        """End of a phase: load the weights of its best step (the optimizer is the phase's, about to go)."""
        best = self._best.get(self.phase.name)
        if best is None:
            log.warning("phase %r: train.select_best %r was never finite; keeping the last state", self.phase.name,
                        self._select_key(self.phase))
            return
        if best["step"] != self.state.step:
            path = ckpt.best_state_path(self.ckpt_dir, best["step"])
            if not ckpt.is_complete(path):
                raise FileNotFoundError(f"the best state of phase {self.phase.name!r} (step {best['step']}) should be "
                                        f"in {str(path)!r}, which is missing or incomplete")
            self.progress.mark(self.state.step, "checkpoint")
            self.engine.load_weights(path)
            self.progress.mark(self.state.step, "train")
        self._restored = True
        log.info("phase %r: restored the state of step %d (%s = %.6g)", self.phase.name, best["step"],
                 best["metric"], best["value"])

    def _throughput(self, samples: int, steps: int, elapsed: float, data_wait: float) -> dict[str, float]:
        """Samples/s, achieved TFLOP/s per device and MFU (when the task states its FLOPs and
        `train.peak_tflops` the device's peak), peak memory and the fraction of time spent waiting for data."""
        devices = dist.get_world_size() if dist.is_initialized() else 1
        row = {"samples_per_s": samples / elapsed, "step_time_s": elapsed / steps,
               "data_wait_frac": data_wait / elapsed, "peak_memory_gb": peak_memory_gb(self._device)}
        if self.flops_per_sample:
            tflops = self.flops_per_sample * samples / elapsed / devices / 1e12
            row["tflops_per_device"] = tflops
            if self.cfg.peak_tflops > 0:
                row["mfu"] = tflops / self.cfg.peak_tflops
        return row

    def _train_loop(self, logger: RunLogger, signals: StopSignals) -> None:
        cfg = self.cfg
        batch_iter = iter(self.batches)
        self.engine.train()
        window_loss = torch.zeros((), device=self._device)
        window_samples, window_steps, window_wait, window_start = 0, 0, 0.0, time.perf_counter()
        while self.state.step < self.total_steps:
            if self.state.step == self.phase_ends[self.state.phase]:
                self._enter_phase(self.state.phase + 1)
            loss, grad_norm, samples, data_wait = self._optimizer_step(batch_iter)
            self.state.step += 1
            window_loss += loss
            window_samples += samples
            window_wait += data_wait
            window_steps += 1
            logger.advance(1)
            if self.state.step % cfg.log_every == 0 or self.state.step == self.total_steps:
                self._raise_if_nonfinite()
                mean_loss = float(window_loss) / window_steps  # the one host sync of the window
                logger.log_step({
                    "step": self.state.step, "phase": self.phase.name, "loss": mean_loss,
                    "lr": self.scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                    **self._throughput(window_samples, window_steps, time.perf_counter() - window_start, window_wait),
                })
                logger.advance(0, loss=mean_loss)
                logger.log_scalars("train", {"skipped_steps": self.state.skipped_steps}, self.state.step)
                window_loss = torch.zeros((), device=self._device)
                window_samples, window_steps, window_wait, window_start = 0, 0, 0.0, time.perf_counter()
            periodic = cfg.eval_every and self.state.step % cfg.eval_every == 0
            phase_end = self.state.step == self.phase_ends[self.state.phase]
            if cfg.select_best and (periodic or phase_end):
                self._consider(self._evaluate(logger, self.task.validate))
                if phase_end:
                    self._restore_best()
            elif periodic and self.state.step < self.total_steps:
                self._evaluate(logger, self.task.validate)
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

    def _evaluate(self, logger: RunLogger, evaluation: Callable[[Any, int], dict[str, Any]]) -> dict[str, Any]:
        """`evaluation`: the task's `validate` (during training) or `evaluate` (the final one)."""
        self._raise_if_nonfinite()
        self.progress.mark(self.state.step, "eval")
        self.engine.train(False)
        grad = contextlib.nullcontext() if self.task.evaluate_with_grad else torch.no_grad()
        with grad, self._autocast():
            results = evaluation(self.engine, self.state.step)
        self.engine.train(True)
        self.progress.mark(self.state.step, "train")
        scalars = {k: v for k, v in results.get("scalars", {}).items()}
        logger.log_scalars("eval", scalars, self.state.step)
        return results
