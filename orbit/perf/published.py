"""ORBIT's and ORBIT-2's published scaling figures, their runs as this framework would lay them out,
and the time model's predictions beside them. The model's constants come from device specs and
micro-measurements (`devices`), never from these figures.

What the papers state (abstracts; sources below) and what is assumed here:
- ORBIT (Wang et al., SC24, arXiv:2404.14712): the abstract states 115M to 113B parameters,
  hybrid tensor-data orthogonal parallelism (Hybrid-STOP: tensor parallel orthogonal to FSDP),
  684 PFLOP/s to 1.6 EFLOP/s sustained and 41% to 85% scaling efficiency on 49,152 MI250X GCDs
  (6,144 Frontier nodes); a secondary summary (lelepado01.github.io/FoundationModel4ClimateNotes)
  adds 91 variables from CMIP6, bf16, a data-parallel layer on top of Hybrid-STOP, activation
  checkpointing and FSDP prefetch. ASSUMED here: the widths/depths of our presets (sized to the
  nominal counts; the 128 x 256 grid, patch 4: 2,048 tokens); the layout per model
  (`orbit_layout`); 2 samples per data rank; that the throughput range spans the models (which
  model gives which end is not stated in the abstract, so each prediction is compared with the
  range); efficiency as weak scaling from one node.
- ORBIT-2 (Wang et al., SC25, arXiv:2505.04802 v2): 10B parameters, Reslim ViT with TILES
  (tile-wise sequence scaling), up to 4.1 EFLOP/s sustained in bf16 and 74% to 98% strong-scaling
  efficiency on 65,536 MI250X GCDs (8,192 nodes). ASSUMED: our `10b` ViT with 2,048 tokens stands
  in for Reslim (which computes its attention per tile; its per-sample sequence can reach billions
  of tokens): only the order of magnitude of per-GPU throughput is comparable.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from orbit.models.config import OrbitConfig
from orbit.models.registry import get_config
from orbit.perf.devices import System
from orbit.perf.plan import GIB, Cluster, Layout, evaluate
from orbit.perf.planner import Ranked, search
from orbit.perf.timemodel import predict

BATCH_PER_DATA_RANK = 2  # assumption (module docstring)


@dataclass(frozen=True)
class Published:
    """One paper's headline figures."""

    name: str
    source: str
    models: tuple[str, ...]
    nodes: int
    gcds: int
    pflops: tuple[float, float]  # sustained, lowest and highest stated
    efficiency: tuple[float, float]
    efficiency_kind: str


ORBIT = Published("ORBIT (SC24)", "Wang et al., SC24; arXiv:2404.14712 (abstract)", ("115m", "1b", "10b", "113b"),
                  6144, 49152, (684.0, 1600.0), (0.41, 0.85), "scaling efficiency (kind and base not in the abstract)")
ORBIT2 = Published("ORBIT-2 (SC25)", "Wang et al., SC25; arXiv:2505.04802 v2 (abstract)", ("10b",),
                   8192, 65536, (4100.0, 4100.0), (0.74, 0.98), "strong-scaling efficiency")
PAPERS = (ORBIT, ORBIT2)


def orbit_layout(config: OrbitConfig, system: System, nodes: int, *, batch: int = BATCH_PER_DATA_RANK,
                 precision: str = "bf16") -> Layout:
    """Hybrid-STOP as this framework lays it out (ASSUMED): tp = one node's ranks when the heads
    allow and the model has >= 10B parameters (else tp = 1); FSDP over the smallest power-of-two
    group of data ranks (at least one node's) in which the memory fits with activation
    checkpointing; the rest data-parallel replicas (HSDP, the DDP layer on top)."""
    g = system.gpus_per_node
    world = nodes * g
    tp = g if config.embed_dim >= 4096 and config.num_heads % g == 0 else 1
    dp = world // tp
    cluster = Cluster(nodes, g, system.device.memory_bytes)
    shard = max(1, min(dp, g // tp))
    while True:
        layout = Layout(pp=1, dp_replicate=dp // shard, dp_shard=shard, sp=1, tp=tp, activation_checkpointing=True)
        plan = evaluate(config, layout, cluster, batch_size=batch, precision=precision)
        if plan.fits or shard >= dp:
            break
        shard = min(dp, shard * 2)
        while dp % shard:
            shard += 1
    if not plan.fits:
        raise ValueError(f"{config.name} does not fit on {nodes} nodes of {system.name} in the ORBIT-style layout "
                         f"({plan.memory.total / GIB:.1f} GiB > {cluster.usable_bytes / GIB:.1f} GiB usable)")
    return layout


def smallest_fitting_nodes(config: OrbitConfig, system: System, *, limit: int = 16384) -> int:
    """Fewest nodes (a power of two) on which `orbit_layout` fits."""
    nodes = 1
    while nodes <= limit:
        try:
            orbit_layout(config, system, nodes)
            return nodes
        except ValueError:
            nodes *= 2
    raise ValueError(f"{config.name} does not fit on {limit} nodes")


@dataclass
class Comparison:
    paper: Published
    model: str
    nodes: int
    orbit: Ranked  # the ORBIT-style layout
    best: Ranked | None  # the planner's recommendation at the same global batch
    weak_efficiency: float  # per-device throughput at `nodes` / at the smallest fitting node count
    base_nodes: int

    @property
    def pflops(self) -> float:
        return self.orbit.step.pflops

    def within(self) -> bool:
        low, high = self.paper.pflops
        return low <= self.pflops <= high


def _ranked(config: OrbitConfig, layout: Layout, system: System, nodes: int, batch: int) -> Ranked:
    cluster = Cluster(nodes, system.gpus_per_node, system.device.memory_bytes)
    plan = evaluate(config, layout, cluster, batch_size=batch, precision="bf16")
    return Ranked(plan, predict(config, layout, system, nodes, batch_size=batch, precision="bf16"))


def compare(paper: Published, model: str, system: System, *, top: int = 1) -> Comparison:
    """The ORBIT-style layout of `model` at the paper's node count, the planner's best at the same
    global batch, and the weak-scaling efficiency from the smallest node count that fits."""
    config = get_config(model)
    layout = orbit_layout(config, system, paper.nodes)
    orbit = _ranked(config, layout, system, paper.nodes, BATCH_PER_DATA_RANK)
    global_batch = BATCH_PER_DATA_RANK * layout.dims(paper.nodes * system.gpus_per_node).dp
    best = search(config, system, paper.nodes, global_batch=global_batch, precision="bf16", top=top)
    base = smallest_fitting_nodes(config, system)
    base_step = _ranked(config, orbit_layout(config, system, base), system, base, BATCH_PER_DATA_RANK)
    efficiency = orbit.step.tflops_per_device / base_step.step.tflops_per_device
    return Comparison(paper, model, paper.nodes, orbit, best[0] if best else None, efficiency, base)


def published_table(rows: list[Comparison]) -> list[str]:
    """Markdown: published beside predicted, per paper and model."""
    lines = ["| paper | model | nodes (GCDs) | published PFLOP/s | predicted PFLOP/s (ORBIT-style layout) | in range | MFU | "
             "step s | published efficiency | predicted weak-scaling efficiency (base nodes) | planner's layout | "
             "its PFLOP/s | its MFU |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r.paper
        pub = f"{p.pflops[0]:,.0f}" if p.pflops[0] == p.pflops[1] else f"{p.pflops[0]:,.0f}–{p.pflops[1]:,.0f}"
        best = r.best
        layout = "-" if best is None else _short(best.layout)
        lines.append(
            f"| {p.name} | {r.model} | {r.nodes:,} ({r.nodes * 8:,}) | {pub} | {r.pflops:,.0f} ({_short(r.orbit.layout)}) | "
            f"{'yes' if r.within() else '**no**'} | "
            f"{r.orbit.step.mfu:.1%} | {r.orbit.step.step_s:.2f} | {p.efficiency[0]:.0%}–{p.efficiency[1]:.0%} | "
            f"{r.weak_efficiency:.0%} ({r.base_nodes}) | {layout} | "
            f"{'-' if best is None else f'{best.step.pflops:,.0f}'} | {'-' if best is None else f'{best.step.mfu:.1%}'} |")
    return lines


def _short(layout: Layout) -> str:
    parts = [f"{a}={getattr(layout, a)}" for a in ("tp", "sp", "pp", "dp_shard", "dp_replicate") if getattr(layout, a) > 1]
    if layout.pp > 1:
        parts.append(f"M={layout.pp_microbatches} {layout.pp_schedule}")
    parts.append("AC" if layout.activation_checkpointing else "no AC")
    return " ".join(parts)


def node_counts(limit: int) -> list[int]:
    """Powers of two up to `limit`, and `limit` itself."""
    out = [2**i for i in range(int(math.log2(limit)) + 1)]
    return out if out[-1] == limit else out + [limit]
