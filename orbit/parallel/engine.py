"""The engine: how one optimizer step's forward and backward run on this rank's layout.

The trainer talks only to this interface, so it never knows which mesh axes are on. An engine is
built once with the task's `loss_fn(output, batch)`; per micro-batch it gets the model's batch-first
`inputs` and the `batch` the loss reads (both moved to its device here), returns the loss (a
detached tensor on its device: the trainer brings it to the host only when it logs), leaves correct
gradients on its parameters, and answers the questions the loop asks (which data shard am I, am I
the rank that logs, what is the mean of a value over the data ranks).

An engine also owns the optimizer step and the checkpoint format, because engines differ there:
torch engines clip and step a torch optimizer built on their (possibly sharded) parameters and
write layout-independent DCP checkpoints, while DeepSpeed ZeRO needs the optimizer before it wraps
the model, steps it itself and resumes only from its own checkpoints. So an engine is built from a
model and an `OptimizerFactory`, calls the factory at the moment its kind requires, and exposes
`optimizer` (for LR schedulers), `optimizer_step(max_norm)`, `save_checkpoint` and `load_checkpoint`.

Torch engines split the optimizer step so the trainer can look at the global gradient norm before
deciding to apply or discard the update (`clip_gradients`, then `apply_gradients` or
`discard_gradients`; `grad_norm_before_step = True`). DeepSpeed computes the norm inside its own
step, so there the trainer learns it only afterwards (`grad_norm_before_step = False`).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from orbit.parallel.checkpoint import AsyncCheckpointWriter, load_distributed, save_distributed

# (model output, the task's batch) -> scalar loss, a mean over the batch's samples
LossFn = Callable[[Any, Any], torch.Tensor]
# The model parts an engine holds (after any sharding) -> a torch optimizer over their parameters.
OptimizerFactory = Callable[[list[nn.Module]], torch.optim.Optimizer]
# Subdirectory of a checkpoint that only DeepSpeed engines write (see orbit/parallel/sharding.py).
DEEPSPEED_STATE_DIR = "deepspeed"


def to_device(value: Any, device: torch.device) -> Any:
    """Tensors, and tuples/lists/dataclasses holding them (a task's batch), onto `device`; None and
    other values unchanged.

    Tasks build batches on the host and know nothing of devices: engines move what they run."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(item, device) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: to_device(getattr(value, f.name), device)
                                             for f in dataclasses.fields(value) if f.init})
    return value


class TorchOptimizerEngine:
    """Optimizer step and DCP checkpoints for engines whose parts hold plain or FSDP/DTensor
    parameters. Needs `parts`, `optimizer` and `clip_grad_norm_(max_norm)` from the engine."""

    parts: list[nn.Module]
    optimizer: torch.optim.Optimizer | None
    grad_norm_before_step = True
    supports_async_checkpoint = True
    _async_writer: AsyncCheckpointWriter | None = None

    def clip_gradients(self, max_norm: float) -> torch.Tensor:
        """Clip to `max_norm` (0 = no clipping); returns the global gradient norm before clipping as
        a tensor on the device (NaN or Inf when any gradient on any rank is)."""
        return self.clip_grad_norm_(max_norm or float("inf"))

    def apply_gradients(self) -> None:
        self.optimizer.step()
        self.discard_gradients()

    def discard_gradients(self) -> None:
        """Drop this step's gradients without touching parameters or optimizer state (those of
        parameters the optimizer does not hold too, e.g. another training phase's)."""
        for param in self.parameters():
            param.grad = None

    def set_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Step `optimizer` from now on (a new training phase with its own parameters and settings)."""
        self.optimizer = optimizer

    def optimizer_step(self, max_norm: float) -> torch.Tensor:
        """Clip, step and zero the gradients; returns the global gradient norm before clipping."""
        norm = self.clip_gradients(max_norm)
        self.apply_gradients()
        return norm

    def save_checkpoint(self, path: str | os.PathLike, extra: dict[str, Any], *,
                        asynchronous: bool = False) -> Path | None:
        """Collective: model + optimizer shards in a DCP directory that loads on any layout; returns
        `path` once written. With `asynchronous`, the state is staged and written in the background
        (at most one save in flight), None is returned and `finish_checkpoint` reports the path."""
        if not asynchronous:
            return save_distributed(path, self.parts, self.optimizer, extra)
        if self._async_writer is None:
            self._async_writer = AsyncCheckpointWriter()
        self._async_writer.start(path, self.parts, self.optimizer, extra)
        return None

    def finish_checkpoint(self, wait: bool) -> Path | None:
        """The path of an asynchronous save that finished (published on rank 0) since the last call,
        else None; `wait` blocks for the one in flight."""
        if self._async_writer is None:
            return None
        return self._async_writer.wait() if wait else self._async_writer.poll()

    def load_weights(self, path: str | os.PathLike) -> dict[str, Any]:
        """Collective: fill the parts only (evaluation: no optimizer) from a checkpoint of any layout,
        DeepSpeed's included (their full weights are stored as DCP too); returns the saved `extra`."""
        return load_distributed(path, self.parts)

    def load_checkpoint(self, path: str | os.PathLike) -> dict[str, Any]:
        """Collective: fill the parts and the optimizer from `path`; returns the saved `extra`."""
        if (Path(path) / DEEPSPEED_STATE_DIR).is_dir():
            raise ValueError(f"checkpoint {str(path)!r} was written by parallel.engine 'deepspeed'; its optimizer "
                             "state is DeepSpeed's own, so resume it with parallel.engine=deepspeed on the same "
                             "world size (its model weights export with orbit.parallel.checkpoint.export_single_file)")
        return load_distributed(path, self.parts, self.optimizer)


class LocalEngine(TorchOptimizerEngine):
    """One process, one model: the reference every parallel layout is checked against.

    Without `make_optimizer` the caller steps its own optimizer (`optimizer` is None). The model
    moves to `device` (one GPU when debugging; the CPU by default); inputs follow it, and forward
    outputs stay there (a task moves to the host what it scores there).
    """

    distributed = False
    dp_rank, dp_size, is_main = 0, 1, True

    def __init__(self, model: nn.Module, loss_fn: LossFn, make_optimizer: OptimizerFactory | None = None,
                 device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.parts = [self.model]
        self.loss_fn = loss_fn
        self.optimizer = make_optimizer(self.parts) if make_optimizer is not None else None

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.model.parameters()

    def train(self, mode: bool = True) -> None:
        for part in self.parts:
            part.train(mode)

    def forward_backward(self, inputs: tuple, batch: Any, scale: float = 1.0) -> torch.Tensor:
        """Loss of the local batch (detached); gradients of `scale * loss` are accumulated."""
        loss = self.loss_fn(self.model(*to_device(inputs, self.device)), to_device(batch, self.device))
        (loss * scale).backward()
        return loss.detach()

    def forward(self, inputs: tuple) -> Any:
        """The model's output on this engine's device (the task moves what it scores)."""
        return self.model(*to_device(inputs, self.device))

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        return nn.utils.clip_grad_norm_(self.model.parameters(), max_norm).detach()

    def mean_over_data_ranks(self, value: torch.Tensor) -> torch.Tensor:
        return value

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()
