"""Predicted strong- and weak-scaling curves of the ORBIT sizes on a system (time model), and their plot.

Weak scaling: the ORBIT-style layout (`published.orbit_layout`) at 2 samples per data rank, from the
fewest nodes it fits on to the whole machine; efficiency = TFLOP/s per device / that at the first
point. Strong scaling: a fixed global batch, at each node count the planner's fastest layout that
fits (`planner.search`); efficiency = speed-up / node ratio against the first node count with a
layout that fits.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from orbit.models.registry import get_config
from orbit.perf.devices import System
from orbit.perf.planner import search
from orbit.perf.published import BATCH_PER_DATA_RANK, PAPERS, orbit_layout, smallest_fitting_nodes
from orbit.perf.timemodel import predict


@dataclass
class Curve:
    model: str
    kind: str  # "weak" or "strong"
    nodes: list[int] = field(default_factory=list)
    pflops: list[float] = field(default_factory=list)
    samples_per_s: list[float] = field(default_factory=list)
    mfu: list[float] = field(default_factory=list)
    layouts: list[str] = field(default_factory=list)

    def efficiency(self) -> list[float]:
        if not self.nodes:
            return []
        if self.kind == "weak":
            per_device = [p / n for p, n in zip(self.pflops, self.nodes)]
            return [x / per_device[0] for x in per_device]
        return [(s / self.samples_per_s[0]) / (n / self.nodes[0]) for s, n in zip(self.samples_per_s, self.nodes)]


def weak_curve(model: str, system: System, node_counts: list[int]) -> Curve:
    config = get_config(model)
    curve = Curve(model, "weak")
    first = smallest_fitting_nodes(config, system)
    for nodes in (n for n in node_counts if n >= first):
        layout = orbit_layout(config, system, nodes)
        step = predict(config, layout, system, nodes, batch_size=BATCH_PER_DATA_RANK, precision="bf16")
        curve.nodes.append(nodes)
        curve.pflops.append(step.pflops)
        curve.samples_per_s.append(step.samples_per_s)
        curve.mfu.append(step.mfu)
        curve.layouts.append(layout.overrides())
    return curve


def strong_curve(model: str, system: System, node_counts: list[int], global_batch: int) -> Curve:
    config = get_config(model)
    curve = Curve(model, "strong")
    for nodes in node_counts:
        best = search(config, system, nodes, global_batch=global_batch, precision="bf16", top=1)
        if not best:
            continue
        curve.nodes.append(nodes)
        curve.pflops.append(best[0].step.pflops)
        curve.samples_per_s.append(best[0].step.samples_per_s)
        curve.mfu.append(best[0].step.mfu)
        curve.layouts.append(best[0].layout.overrides())
    return curve


def plot(curves: list[Curve], path: Path, *, gpus_per_node: int, global_batch: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    for kind, col in (("weak", 0), ("strong", 1)):
        top, bottom = axes[0, col], axes[1, col]
        for c in (c for c in curves if c.kind == kind):
            gcds = [n * gpus_per_node for n in c.nodes]
            top.plot(gcds, c.pflops, "o-", label=c.model)
            if c.nodes:
                top.plot(gcds, [c.pflops[0] * n / c.nodes[0] for n in c.nodes], ":", color="grey", lw=0.8)
            bottom.plot(gcds, c.efficiency(), "o-", label=c.model)
        for paper in PAPERS:
            low, high = paper.pflops
            top.plot([paper.gcds, paper.gcds], [low, high], "k-", lw=3, alpha=0.5)
            top.annotate(paper.name, (paper.gcds, high), fontsize=7, ha="right")
        title = ("weak scaling, ORBIT-style layout, 2 samples per data rank" if kind == "weak"
                 else f"strong scaling, global batch {global_batch}, planner's best layout per point")
        top.set(title=title, xlabel="GCDs", ylabel="predicted PFLOP/s (bf16 model FLOPs)", xscale="log", yscale="log")
        bottom.set(title=f"{kind}-scaling efficiency (predicted)", xlabel="GCDs", ylabel="efficiency", xscale="log",
                   ylim=(0, 1.6))
        top.legend(fontsize=8)
        bottom.legend(fontsize=8)
    fig.suptitle("Time model on Frontier (MI250X GCD profile from specs; dotted: ideal; bars: published ranges)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
