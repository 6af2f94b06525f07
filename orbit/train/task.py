"""The task contract: what every task gives the one trainer, `orbit evaluate` and the runner.

A task wires data, a model, a loss and an evaluation together; the trainer owns everything else
(engine, optimizer, schedule, checkpoints, logging). Subclass `Task`, override what your task needs
and register it (`orbit.registry.register_task`). `orbit/train/template.py` is a commented skeleton;
`orbit/plugins/regression/` a complete small plug-in.

Required:
- `build_model()`: the model, as its registered model family (`orbit.models.registry`) builds it.
- `train_batches(dp_rank, dp_size)`: endless batches for this data rank, resumable
  (`state_dict` / `load_state_dict`, see `ResumableBatches`).
- `model_inputs(batch)`: the model's positional inputs, batch-first tensors (or None).
- `loss(output, batch)`: a scalar mean over the batch's samples. It sees the model output and the
  whole batch (moved to the engine's device), so targets may be built from both, e.g. from the
  output of a network trained in an earlier phase. Under pipeline layouts the batch is split into
  microbatches: give a tensor, a tuple of batch-first tensors or an object with `select(rows)`.
Optional (defaults here):
- `evaluate(engine, step)`: held-out scores; `{"scalars": {...}}` are logged. Runs under
  `torch.no_grad()` unless `evaluate_with_grad` (e.g. gradient-based explanations). The trainer calls
  it once, after the last step (and after restoring the best state under `train.select_best`);
  `orbit evaluate` calls it for any checkpoint.
- `validate(engine, step)`: what training looks at: the periodic evaluations (`train.eval_every`)
  and the scalars `train.select_best` compares. Default: `evaluate`. Override it when the full
  evaluation is slow or scores test data, so that choosing a checkpoint sees validation data only.
- `report(summary, run_dir)`: tables and figures after training or `orbit evaluate`.
- `predictions(engine)`: an xarray Dataset that `orbit evaluate` writes, or None.
- `phases(train_cfg)`: training stages run one after the other, each with its own trainable modules,
  optimizer settings, step count and loss; checkpoints record the phase, so a run resumes inside it.
- `train_flops_per_sample()`: analytic FLOPs of one sample's forward + backward, for TFLOP/s and MFU.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import nn


class ResumableBatches(Protocol):
    """An endless iterable of batches whose position can be saved and restored."""

    def __iter__(self): ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class Phase:
    """One training stage. `modules`: names of the model's top-level modules (or dotted prefixes)
    whose parameters this phase trains, () = all; `lr`, `weight_decay`, `warmup_steps`: None = the
    `train:` section's; `loss`: None = the task's `loss`."""

    name: str
    steps: int
    modules: tuple[str, ...] = ()
    lr: float | None = None
    weight_decay: float | None = None
    warmup_steps: int | None = None
    loss: Callable[[Any, Any], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"phase {self.name!r} needs steps >= 1, got {self.steps}")

    def trains(self, parameter_name: str) -> bool:
        """Whether this phase updates the parameter called `parameter_name` (as the model names it)."""
        return not self.modules or any(parameter_name == m or parameter_name.startswith(m + ".")
                                       for m in self.modules)


class Task(ABC):
    """Base class of every task: the four required methods are abstract (a task missing one cannot be
    built), the optional ones have defaults."""

    evaluate_with_grad = False

    @abstractmethod
    def build_model(self) -> nn.Module:
        """See the module docstring."""

    @abstractmethod
    def train_batches(self, dp_rank: int, dp_size: int) -> ResumableBatches:
        """See the module docstring."""

    @abstractmethod
    def model_inputs(self, batch: Any) -> tuple:
        """See the module docstring."""

    @abstractmethod
    def loss(self, output: Any, batch: Any) -> torch.Tensor:
        """See the module docstring."""

    def evaluate(self, engine: Any, step: int) -> dict[str, Any]:
        return {}

    def validate(self, engine: Any, step: int) -> dict[str, Any]:
        return self.evaluate(engine, step)

    def report(self, summary: dict[str, Any], run_dir: Path) -> None:
        return None

    def predictions(self, engine: Any) -> Any:
        return None

    def phases(self, train_cfg) -> list[Phase]:
        return [Phase("train", train_cfg.max_steps)]

    def train_flops_per_sample(self) -> float | None:
        return None
