"""Activation checkpointing of transformer blocks, without changing state-dict keys.

Wraps torch's (semi-private) `checkpoint_wrapper`, which strips its own prefix from state-dict
keys, so checkpoints stay interchangeable between runs with and without the switch.
"""
from __future__ import annotations

from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointImpl,
    checkpoint_wrapper,
)


def apply_activation_checkpointing(model: nn.Module) -> int:
    """Recompute each of `model.blocks` in backward; returns how many blocks were wrapped.

    `blocks` may be a ModuleList (whole model) or a ModuleDict (a pipeline stage).
    """
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, (nn.ModuleList, nn.ModuleDict)):
        raise ValueError(f"activation checkpointing needs `model.blocks` (a ModuleList or ModuleDict); "
                         f"{type(model).__name__} has none")
    for name, block in list(blocks.named_children()):
        blocks.register_module(name, checkpoint_wrapper(block, checkpoint_impl=CheckpointImpl.NO_REENTRANT))
    return len(blocks)
