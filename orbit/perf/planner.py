"""`orbit plan --search`: rank the layouts of a model on a system by the time model's predicted step,
among those whose memory fits (`plan.evaluate`), at a fixed global batch.

Candidates (fsdp engine): tp dividing a node and the heads; sp dividing the remaining heads and the
tokens (up to a node); pp in powers of two up to the depth with 1F1B, and interleaved 1F1B with 2
stages per rank where the depth allows, M microbatches among the smallest three multiples of the
stage count that divide the local batch; dp = world / (tp sp pp) data ranks dividing the global
batch; dp_replicate 1 (FSDP over all data ranks) or HSDP with one node's (or 8 nodes') data ranks
per shard group; activation checkpointing off and on.
"""
from __future__ import annotations

from dataclasses import dataclass

from orbit.models.config import OrbitConfig
from orbit.perf.devices import System
from orbit.perf.plan import GIB, Cluster, Layout, Plan, configured_layout, evaluate, planned_model
from orbit.perf.timemodel import StepTime, predict
from orbit.parallel.mesh import AXES


@dataclass
class Ranked:
    """A layout that fits, its memory (`plan`) and its predicted step."""

    plan: Plan
    step: StepTime

    @property
    def layout(self) -> Layout:
        return self.plan.layout

    def as_dict(self) -> dict:
        layout = self.layout
        return {"layout": {**{axis: getattr(layout, axis) for axis in AXES},
                           "pp_microbatches": layout.pp_microbatches, "pp_schedule": layout.pp_schedule,
                           "pp_stages_per_rank": layout.pp_stages_per_rank,
                           "activation_checkpointing": layout.activation_checkpointing},
                "overrides": overrides(self), "batch_per_data_rank": self.plan.batch_size,
                "memory_gib_per_rank": self.plan.memory.total / GIB, **self.step.as_dict()}


def overrides(ranked: Ranked) -> str:
    """Paste-able `orbit pretrain` overrides, the per-data-rank batch and schedule included."""
    layout = ranked.layout
    extra = [f"data.batch_size={ranked.plan.batch_size}"]
    if layout.pp > 1:
        extra += [f"parallel.pp_schedule={layout.pp_schedule}", f"parallel.pp_stages_per_rank={layout.pp_stages_per_rank}"]
    return " ".join([layout.overrides(), *extra])


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def candidates(config: OrbitConfig, system: System, nodes: int, global_batch: int) -> list[tuple[Layout, int]]:
    """(layout, batch per data rank) pairs (module docstring)."""
    g = system.gpus_per_node
    world = nodes * g
    out = []
    for tp in _divisors(g):
        if config.num_heads % tp or config.agg_heads % tp:
            continue
        for sp in _divisors(config.num_heads // tp):
            if sp > g or config.num_tokens % sp or world % (tp * sp):
                continue
            pp = 1
            while pp <= config.depth and world % (tp * sp * pp) == 0:
                dp = world // (tp * sp * pp)
                if global_batch % dp == 0:
                    out += _pipeline_variants(config, tp, sp, pp, dp, global_batch // dp, g)
                pp *= 2
    return out


def _pipeline_variants(config: OrbitConfig, tp: int, sp: int, pp: int, dp: int, local: int,
                       g: int) -> list[tuple[Layout, int]]:
    schedules = [("1f1b", 1)] if pp == 1 else [("1f1b", 1)] + [("interleaved_1f1b", 2)] * (2 * pp <= config.depth)
    per_node = max(1, g // (tp * sp * pp))
    replicas = {1} | {dp // s for s in (per_node, 8 * per_node) if s < dp and dp % s == 0}
    out = []
    for schedule, v in schedules:
        counts = [1] if pp == 1 else [m for m in _divisors(local) if m >= pp * v and m % (pp * v) == 0][:3]
        for m in counts:
            for r in sorted(replicas):
                for ac in (False, True):
                    out.append((Layout(pp=pp, dp_replicate=r, dp_shard=dp // r, sp=sp, tp=tp, pp_microbatches=m,
                                       pp_stages_per_rank=v, pp_schedule=schedule, activation_checkpointing=ac),
                                local))
    return out


def search(config: OrbitConfig, system: System, nodes: int, *, global_batch: int, precision: str,
           flash_attention: bool = True, headroom: float = 0.15, top: int = 5) -> list[Ranked]:
    """The `top` layouts with the shortest predicted step whose memory fits, fastest first."""
    if global_batch < 1:
        raise ValueError(f"global batch must be >= 1, got {global_batch}")
    cluster = Cluster(nodes, system.gpus_per_node, system.device.memory_bytes, headroom=headroom)
    ranked = []
    for layout, local in candidates(config, system, nodes, global_batch):
        plan = evaluate(config, layout, cluster, batch_size=local, precision=precision, flash_attention=flash_attention)
        if plan.fits:
            ranked.append(Ranked(plan, predict(config, layout, system, nodes, batch_size=local, precision=precision)))
    ranked.sort(key=lambda r: (r.step.step_s, r.plan.memory.total))
    return ranked[:top]


def evaluate_layout(config: OrbitConfig, layout: Layout, system: System, nodes: int, *, batch_size: int,
                    precision: str, flash_attention: bool = True, headroom: float = 0.15) -> Ranked:
    """One layout's memory plan and predicted step (whether it fits or not)."""
    cluster = Cluster(nodes, system.gpus_per_node, system.device.memory_bytes, headroom=headroom)
    plan = evaluate(config, layout, cluster, batch_size=batch_size, precision=precision, flash_attention=flash_attention)
    if not plan.valid:
        raise ValueError(f"invalid layout: {'; '.join(plan.problems)}")
    return Ranked(plan, predict(config, layout, system, nodes, batch_size=batch_size, precision=precision))


def format_ranked(title: str, ranked: list[Ranked]) -> str:
    """Table of ranked layouts with their predicted step, MFU and memory, and the overrides to paste."""
    lines = [title, f"  {'#':>2} {'step s':>8} {'samples/s':>10} {'TFLOP/s/dev':>11} {'MFU':>6} {'PFLOP/s':>9} "
                    f"{'GiB/rank':>8}  layout"]
    for i, r in enumerate(ranked, 1):
        layout = r.layout
        degrees = " ".join(f"{a}={getattr(layout, a)}" for a in AXES)
        pipe = f" M={layout.pp_microbatches} {layout.pp_schedule}" if layout.pp > 1 else ""
        lines.append(f"  {i:>2} {r.step.step_s:8.3f} {r.step.samples_per_s:10.1f} {r.step.tflops_per_device:11.1f} "
                     f"{r.step.mfu:6.1%} {r.step.pflops:9.2f} {r.plan.memory.total / GIB:8.1f}  {degrees}{pipe} "
                     f"AC {'on' if layout.activation_checkpointing else 'off'}")
        lines.append(f"     {overrides(r)}")
        terms = ", ".join(f"{k} {v:.3f}" for k, v in r.step.breakdown().items() if v > 0)
        lines.append(f"     predicted s: {terms}")
    if not ranked:
        lines.append("  (no layout fits: more nodes or a smaller batch)")
    return "\n".join(lines)


def search_config(cfg, system: System, nodes: int, *, grid: tuple[int, int] | None = None, top: int = 5,
                  flash_attention: bool = True, headroom: float = 0.15) -> dict:
    """`orbit plan --search` for a RunConfig: the configured layout's prediction and the `top` layouts
    at the configured global batch (data.batch_size x the configured data-parallel degree)."""
    config = planned_model(cfg, grid)
    precision = cfg.train.precision
    world = nodes * system.gpus_per_node
    layout = configured_layout(cfg, world)
    global_batch = cfg.data.batch_size * layout.dims(world).dp
    configured = evaluate_layout(config, layout, system, nodes, batch_size=cfg.data.batch_size, precision=precision,
                                 flash_attention=flash_attention, headroom=headroom)
    best = search(config, system, nodes, global_batch=global_batch, precision=precision,
                  flash_attention=flash_attention, headroom=headroom, top=top)
    return {"model": config.name, "system": system.name, "device": system.device.name, "nodes": nodes,
            "world_size": world, "global_batch": global_batch, "precision": precision,
            "configured": configured, "ranked": best}


def format_search(result: dict) -> str:
    configured = result["configured"]
    fits = "fits" if configured.plan.fits else "DOES NOT FIT"
    head = (f"model {result['model']} on {result['nodes']} {result['system']} nodes ({result['world_size']} x "
            f"{result['device']}), global batch {result['global_batch']}, {result['precision']}")
    return "\n".join([head, "", format_ranked(f"configured layout ({fits}):", [configured]), "",
                      format_ranked("fastest layouts that fit (predicted step, time model):", result["ranked"])])


def search_json(result: dict) -> dict:
    return {**{k: v for k, v in result.items() if k not in ("configured", "ranked")},
            "configured": {**result["configured"].as_dict(), "fits": result["configured"].plan.fits},
            "ranked": [r.as_dict() for r in result["ranked"]]}
