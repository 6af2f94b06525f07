"""The engine: how one optimizer step's forward and backward run on this rank's layout.

The trainer talks only to this interface, so it never knows which mesh axes are on. A task gives
batch-first tensors (`inputs`, `target`) and a `loss_fn(output, target)`; the engine returns the
loss, leaves correct gradients on its parameters, and answers the questions the loop asks
(which data shard am I, am I the rank that logs, what is the mean of a value over the data ranks).
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class LocalEngine:
    """One process, one model: the reference every parallel layout is checked against."""

    distributed = False
    dp_rank, dp_size, is_main = 0, 1, True

    def __init__(self, model: nn.Module):
        self.model = model
        self.parts = [model]

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.model.parameters()

    def train(self, mode: bool = True) -> None:
        for part in self.parts:
            part.train(mode)

    def forward_backward(self, inputs: tuple, target: torch.Tensor, loss_fn: LossFn, scale: float = 1.0) -> torch.Tensor:
        """Loss of the local batch (detached); gradients of `scale * loss` are accumulated."""
        loss = loss_fn(self.model(*inputs), target)
        (loss * scale).backward()
        return loss.detach()

    def forward(self, inputs: tuple) -> torch.Tensor:
        return self.model(*inputs)

    def clip_grad_norm_(self, max_norm: float) -> float:
        return float(nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))

    def mean_over_data_ranks(self, value: torch.Tensor) -> torch.Tensor:
        return value

    def sum_over_data_ranks_(self, value: torch.Tensor) -> torch.Tensor:
        return value

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()
