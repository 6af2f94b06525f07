"""α–β time of one collective on a group of ranks placed on nodes (Hockney model).

S is the payload (all-reduce / reduce-scatter / all-to-all: the input; all-gather: the gathered
output; send: the message), n ranks in the group, m nodes it spans, g = n / m ranks per node,
c = gpus_per_node / g groups of the same axis per node running at once (they share the NICs).
α, β: the link's latency per message step and bytes/s; B = nics_per_node x NIC bytes/s.

Inside one node (m = 1), ring over the intra-node link:
    all-gather, reduce-scatter   (n-1) α + (n-1)/n S / β
    all-reduce                   2 (n-1) α + 2 (n-1)/n S / β
    all-to-all                   (n-1) α + (n-1)/n S / β        (pairwise exchange)
    send                         α + S / β
Across nodes, the faster of (what NCCL/RCCL choose between):
  - flat ring: every rank's share of the NICs, β_r = B / gpus_per_node:
        all-gather (n-1) α_inter + (n-1)/n S / β_r; all-reduce twice that
  - double binary tree (all-reduce only): 2 log2(n) α_inter + 2 (n-1)/n S / β_r
  - hierarchical (HSDP-style: intra-node phase, then one inter-node phase per node's share):
        all-gather = (m-1) α_inter + c (1 - 1/m) S / B  +  (g-1) α + (g-1)/g S / β
        (each node receives the (m-1)/m S it lacks over its NICs, for each of its c groups, then
        the ranks of a node exchange their parts); reduce-scatter alike; all-reduce = both.
    all-to-all across nodes: (n-1) α_inter + c g (1 - g/n) S / B + (g-1)/n S / β
    send across nodes: α_inter + S / β_r.
A link with `per_op` constants (the CPU's measured gloo collectives) uses them in the ring formulas.
"""
from __future__ import annotations

import math

from orbit.perf.devices import Link, System

OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv")


def _ring(op: str, n: int, size: float, link: Link, steps_link: Link | None = None,
          bytes_per_s: float | None = None) -> float:
    alpha, beta = link.alpha_beta(op)
    if steps_link is not None:
        alpha = steps_link.alpha_beta(op)[0]
    beta = beta if bytes_per_s is None else bytes_per_s
    if op == "send_recv":
        return alpha + size / beta
    steps = 2 * (n - 1) if op == "all_reduce" else n - 1
    return steps * alpha + steps / n * size / beta


def collective_time(op: str, size: float, n: int, nodes: int, system: System) -> float:
    """Seconds for one `op` of payload `size` bytes on `n` ranks spanning `nodes` nodes (module doc)."""
    if op not in OPS:
        raise ValueError(f"unknown collective {op!r}; valid: {OPS}")
    if n < 1 or nodes < 1 or nodes > n:
        raise ValueError(f"a group of n={n} ranks cannot span {nodes} nodes")
    if size <= 0 or (n == 1 and op != "send_recv"):
        return 0.0
    if nodes == 1:
        return _ring(op, n, size, system.intra)
    share = system.node_inter_bytes_per_s / system.gpus_per_node
    flat = _ring(op, n, size, system.inter, bytes_per_s=share)
    if op == "send_recv":
        return flat
    if op == "all_reduce":
        tree = 2 * math.log2(n) * system.inter.alpha_beta(op)[0] + 2 * (n - 1) / n * size / share
        flat = min(flat, tree)
    return min(flat, _hierarchical(op, size, n, nodes, system))


def _hierarchical(op: str, size: float, n: int, m: int, system: System) -> float:
    g = n / m
    c = max(1.0, system.gpus_per_node / g)
    alpha_i, beta_i = system.intra.alpha_beta(op)
    alpha_x = system.inter.alpha_beta(op)[0]
    big = system.node_inter_bytes_per_s
    if op == "all_to_all":
        return (n - 1) * alpha_x + c * g * (1 - g / n) * size / big + (g - 1) / n * size / beta_i
    half = (m - 1) * alpha_x + c * (1 - 1 / m) * size / big
    if g > 1:
        half += (g - 1) * alpha_i + (g - 1) / g * size / beta_i
    return 2 * half if op == "all_reduce" else half
