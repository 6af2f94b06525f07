"""What happens to a model's repeated units, in one place: activation checkpointing and compile.

The units are the container the model family's plan names (`ParallelPlan.blocks`, e.g. the ViT's
transformer blocks). Wrapping goes through torch's (semi-private) `checkpoint_wrapper`, which strips
its own prefix from state-dict keys, and `Module.compile`, which compiles in place: checkpoints stay
interchangeable between runs with and without either switch.
"""
from __future__ import annotations

from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

from orbit.parallel.plans import ParallelPlan


def wrap_units(module: nn.Module, plan: ParallelPlan, *, activation_checkpointing: bool, compile: bool) -> None:
    """Checkpoint activations of and/or compile `module`'s units (a whole model or a pipeline stage),
    in place. Apply after tensor and sequence parallelism and before FSDP."""
    units = plan.unit_container(module)
    if activation_checkpointing:
        if units is None:
            raise ValueError(f"train.activation_checkpointing=true needs repeated units to recompute, and model "
                             f"family {plan.family!r} declares none (ParallelPlan.blocks); set "
                             "train.activation_checkpointing=false")
        for name, unit in list(units.named_children()):
            units.register_module(name, checkpoint_wrapper(unit, checkpoint_impl=CheckpointImpl.NO_REENTRANT))
    if compile:
        for unit in (units.children() if units is not None else [module]):
            unit.compile()
