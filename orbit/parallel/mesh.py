"""Parallel degrees -> one named DeviceMesh (Hybrid-STOP layout).

Axes, outermost to innermost: pp, dp_replicate, dp_shard, sp, tp. tp is innermost so a tensor-
parallel group sits on adjacent ranks (one node's fast links); pp is outermost so stages talk
rarely over the slow links. Derived (flattened) meshes:

- "dp"         = dp_replicate x dp_shard: ranks that see different data (the loader shards over it);
- "dp_shard_sp" = dp_shard x sp: FSDP shards parameters over it (sp ranks hold the same
                  parameters, so they join the shard group, as torchtitan does with context parallel);
- "loss"       = dp_replicate x dp_shard x sp: ranks whose partial losses are averaged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

AXES = ("pp", "dp_replicate", "dp_shard", "sp", "tp")


@dataclass(frozen=True)
class ParallelDims:
    """Degrees of each axis; at most one may be -1, meaning "the rest of the world"."""

    world_size: int
    pp: int = 1
    dp_replicate: int = 1
    dp_shard: int = -1
    sp: int = 1
    tp: int = 1

    def __post_init__(self) -> None:
        degrees = {axis: getattr(self, axis) for axis in AXES}
        bad = {axis: d for axis, d in degrees.items() if d == 0 or d < -1}
        if bad:
            raise ValueError(f"parallel degrees must be >= 1 or -1 (the rest); got {bad}")
        free = [axis for axis, d in degrees.items() if d == -1]
        if len(free) > 1:
            raise ValueError(f"only one parallel degree may be -1, got {free}")
        fixed = math.prod(d for d in degrees.values() if d != -1)
        if free:
            if self.world_size % fixed:
                raise ValueError(f"world size {self.world_size} is not divisible by the product {fixed} of "
                                 f"the fixed degrees {({a: d for a, d in degrees.items() if d != -1})}")
            object.__setattr__(self, free[0], self.world_size // fixed)
        elif fixed != self.world_size:
            raise ValueError(f"parallel degrees {degrees} multiply to {fixed}, but the world size is "
                             f"{self.world_size}; make them multiply to {self.world_size} or set one to -1")

    @property
    def degrees(self) -> dict[str, int]:
        return {axis: getattr(self, axis) for axis in AXES}

    @property
    def dp(self) -> int:
        """Number of data-parallel replicas of the batch (ranks that read different samples)."""
        return self.dp_replicate * self.dp_shard

    def enabled(self, axis: str) -> bool:
        return getattr(self, axis) > 1

    def build_mesh(self, device_type: str = "cpu") -> DeviceMesh:
        """The named world mesh plus flattened "dp", "dp_shard_sp" and "loss" meshes."""
        if dist.is_initialized() and dist.get_world_size() != self.world_size:
            raise ValueError(f"ParallelDims is for world size {self.world_size}, but the process group "
                             f"has {dist.get_world_size()} ranks")
        mesh = init_device_mesh(device_type, tuple(self.degrees.values()), mesh_dim_names=AXES)
        mesh["dp_replicate", "dp_shard"]._flatten("dp")
        mesh["dp_shard", "sp"]._flatten("dp_shard_sp")
        mesh["dp_replicate", "dp_shard", "sp"]._flatten("loss")
        return mesh


def parallel_dims_from(config, world_size: int) -> ParallelDims:
    """Build from any object with the degree attributes (e.g. the `parallel:` config section)."""
    names = [f.name for f in fields(ParallelDims) if f.name != "world_size"]
    return ParallelDims(world_size=world_size, **{n: getattr(config, n) for n in names})
