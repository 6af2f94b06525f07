"""What a model family tells the engine about how it may be parallelized (torchtitan's ModelSpec idea).

The engine (`orbit/parallel/`) imports no model: a model family registers a `ParallelPlan` beside
its architecture (`orbit/models/registry.py`), and whoever builds the engine passes it in. Every
field is optional. A family with an empty plan trains on any pure data-parallel layout (DDP-like
FSDP2 replication, FSDP2/HSDP sharding, DeepSpeed ZeRO); asking it for tp, sp or pp is an error,
raised before any collective, that names the family and the axes it supports.

Fields:
- `blocks(module)`: the container (ModuleList or ModuleDict) of the model's repeated units. They are
  what activation checkpointing wraps, what `parallel.compile` compiles and what FSDP shards as
  separate units (only one unit's full parameters exist at a time). Without it the whole model is
  one unit: it is compiled whole, and activation checkpointing is refused.
- `tensor_parallel(module, tp_mesh)`: shard `module` (the model or one pipeline stage) in place.
- `sequence_parallel(module, sp_mesh)`: make `module` sequence parallel in place.
- `pipeline_split(model, pp_mesh, stages_per_rank)`: this rank's stage modules, lowest index first.
  Each stage has `index`, `num_stages`, `is_first` and `is_last`; the first stage takes the model's
  inputs by keyword, named by `pipeline_inputs` (the positional inputs of the model's `forward`);
  `check_pipeline_inputs(inputs_by_name)` refuses inputs microbatches cannot split (on every rank).
- `layout_problems(model, dims, parallel_cfg, batch_size)`: one sentence per reason the layout cannot
  work for this model (head counts, token counts, depth against stages), empty when it can.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from orbit.parallel.mesh import ParallelDims


@dataclass(frozen=True)
class ParallelPlan:
    family: str
    blocks: Callable[[nn.Module], nn.ModuleList | nn.ModuleDict] | None = None
    tensor_parallel: Callable[[nn.Module, Any], Any] | None = None
    sequence_parallel: Callable[[nn.Module, Any], Any] | None = None
    pipeline_split: Callable[[nn.Module, Any, int], list[nn.Module]] | None = None
    pipeline_inputs: tuple[str, ...] = ()
    check_pipeline_inputs: Callable[[dict], None] | None = None
    layout_problems: Callable[[nn.Module, ParallelDims, Any, int], list[str]] | None = None

    def supported_axes(self) -> list[str]:
        """Mesh axes this family can use; the data-parallel ones always."""
        axes = ["dp_replicate", "dp_shard"]
        axes += [axis for axis, field in (("tp", self.tensor_parallel), ("sp", self.sequence_parallel),
                                          ("pp", self.pipeline_split)) if field is not None]
        return axes

    def problems(self, model: nn.Module, dims: ParallelDims, parallel_cfg, batch_size: int) -> list[str]:
        """Why `dims` cannot run this model (empty: it can)."""
        unsupported = {axis: getattr(dims, axis) for axis in ("tp", "sp", "pp")
                       if getattr(dims, axis) > 1 and axis not in self.supported_axes()}
        if unsupported:
            return [f"model family {self.family!r} declares no plan for {sorted(unsupported)} "
                    f"(asked for {unsupported}); it supports the axes {self.supported_axes()}, so set "
                    + " ".join(f"parallel.{axis}=1" for axis in sorted(unsupported))]
        if self.layout_problems is None:
            return []
        return self.layout_problems(model, dims, parallel_cfg, batch_size)

    def unit_container(self, module: nn.Module) -> nn.ModuleList | nn.ModuleDict | None:
        """`module`'s repeated units, or None when the family declares none."""
        return self.blocks(module) if self.blocks is not None else None


def data_parallel_only(family: str) -> ParallelPlan:
    """The plan of a model that declares nothing: data parallelism only, the whole model one unit."""
    return ParallelPlan(family=family)
