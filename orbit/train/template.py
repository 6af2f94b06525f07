"""A commented skeleton of a task and its model: copy it into `orbit/plugins/<name>/`, fill in each
method, then register both (see the end of this file). Nothing here is registered, so importing
this module changes nothing. `orbit/plugins/regression/` is the same skeleton filled in.

The trainer owns the engine (DDP/FSDP/DeepSpeed, TP/SP/PP), optimizer, schedule, checkpoints,
logging and the CLI; a task only says what the data, the model, the loss and the scores are.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from orbit.config import DataConfig, EvalConfig
from orbit.data.sampler import RowBatches
from orbit.train.task import Task


@dataclass
class TemplateModelConfig:
    """The `model:` section. Every field is type-checked from YAML and dotted overrides, and an
    unknown key is an error, so put every knob a user may turn here rather than in `options:`."""

    hidden: int = 64


@dataclass
class TemplateDataConfig(DataConfig):
    """The `data:` section. Must subclass DataConfig: the trainer reads `batch_size` (per data rank)
    and `num_workers` from every task. Add `validate(self)` raising ValueError for value checks."""

    path: str | None = None


@dataclass
class TemplateEvalConfig(EvalConfig):
    """The `eval:` section; subclasses EvalConfig (`batch_size`)."""


class TemplateModel(nn.Module):
    """The network: batch-first tensors in, a tensor out. It must know nothing of meshes, ranks or
    devices (the engine shards and places it); a parallel plan, if any, is declared at registration."""

    def __init__(self, config: TemplateModelConfig, in_features: int, out_features: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, config.hidden), nn.GELU(),
                                 nn.Linear(config.hidden, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TemplateTask(Task):
    def __init__(self, cfg):
        # Open and check the data here, before any run directory is written, and fail with a message
        # naming the bad value. Every rank builds the task, so it must be deterministic (seeded).
        # Compute normalization statistics from the training split only. Here: a seeded toy table.
        self.cfg = cfg
        rng = np.random.default_rng(cfg.train.seed)
        self.x = rng.normal(size=(256, 1)).astype(np.float32)
        self.y = (2.0 * self.x + 0.1 * rng.normal(size=(256, 1))).astype(np.float32)
        self.train_rows = np.arange(200)  # the rest held out for evaluation

    def build_model(self) -> nn.Module:
        # Return the plain model on the CPU; the engine wraps, shards and moves it. Sizes that come
        # from the data (number of inputs/outputs) are known here because __init__ opened the data.
        return TemplateModel(self.cfg.model, in_features=1, out_features=1)

    def train_batches(self, dp_rank: int, dp_size: int):
        # Endless batches of this data rank's share, with state_dict()/load_state_dict() so a resumed
        # run continues the same sample stream. Use orbit.data.sampler.ShardedSampler: its ranks'
        # batches concatenate to the one-process batch, so changing the layout keeps the numbers.
        # RowBatches does exactly that for an in-memory table.
        return RowBatches(self.x, self.y, self.train_rows, self.cfg.data.batch_size, self.cfg.train.seed,
                          dp_rank, dp_size)

    def model_inputs(self, batch: Any) -> tuple:
        # The model's positional inputs taken from a batch, batch-first (pipeline layouts split them
        # along dim 0). The engine moves them to its device.
        return (batch[0],)

    def loss(self, output: Any, batch: Any) -> torch.Tensor:
        # A scalar mean over the batch's samples, so that ranks' losses average to the global one.
        # Compute in float32 (output.float()) so bf16 runs reduce in full precision.
        return nn.functional.mse_loss(output.float(), batch[1])

    def evaluate(self, engine, step: int) -> dict[str, Any]:
        # Held-out scores in physical units beside a simple baseline; "scalars" are logged. Every rank
        # calls this and must run the same forwards (engine.forward((x,)), FSDP gathers collectively).
        held_out = np.arange(200, len(self.x))
        x, y = torch.from_numpy(self.x[held_out]), torch.from_numpy(self.y[held_out])
        mse = float(((engine.forward((x,)).float().cpu() - y) ** 2).mean())
        baseline = float(((y - float(self.y[self.train_rows].mean())) ** 2).mean())  # the training mean
        return {"scalars": {"mse": mse, "mse_train_mean": baseline}}

    # Optional `validate(engine, step)`: what training looks at (periodic evaluations, train.select_best);
    # by default `evaluate`. Override it when `evaluate` is slow or scores test data (see the PI3NN and
    # streamflow tasks): choosing a checkpoint must see validation data only.

    def report(self, summary: dict[str, Any], run_dir: Path) -> None:
        # Rank 0 only: print a short table and write small files (markdown, a figure) to run_dir.
        return None

    def predictions(self, engine) -> Any:
        # An xarray Dataset that `orbit evaluate` writes (zarr/netCDF), or None.
        return None


# To make it a plug-in (in orbit/plugins/<name>/__init__.py or the module itself):
#   from orbit.models.registry import register_family
#   from orbit.registry import register_task
#   register_family("template", TemplateModel)            # no plan: data parallelism only
#   register_task("template", model=TemplateModelConfig, data=TemplateDataConfig,
#                 eval=TemplateEvalConfig)(TemplateTask)
# Then run it with `orbit finetune --config <yaml with task: template>` (no --init: from scratch).
