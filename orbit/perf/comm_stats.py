"""Count the bytes this rank sends on each mesh axis, at the process-group (c10d) level.

Why at the process group: FSDP2 calls `dist.all_gather_into_tensor` / `reduce_scatter_tensor`,
pipelining calls `isend`/`irecv`, DTensor and our Ulysses code call functional collectives that go
straight to C++. `CommDebugMode` (a dispatch mode) counts collective calls but neither their bytes
nor point-to-point sends. Every one of them, however, is issued through a `ProcessGroup`, and a
pre-hook registered on the group (`ProcessGroup.register_pre_hook`, in torch 2.14, absent from older
releases) sees each call with its input and output tensors before it is issued. A group's set of ranks says which mesh axis it serves.

What is counted, per axis: the number of calls, the payload (the buffer the collective is about:
all-reduce / all-to-all / send: the input; all-gather: the gathered output; reduce-scatter: the
input before scattering; recv: the received buffer) and the bytes this rank *sends* under a
bandwidth-optimal (ring) algorithm, the convention of nccl-tests' "bus bytes", with n ranks in the
group and S the payload:

    all-reduce 2 (n-1)/n S    all-gather, reduce-scatter, all-to-all (n-1)/n S
    send S    recv 0          broadcast, scatter: S on the root (a pipelined chain), 0 elsewhere
    reduce, gather: S on every non-root rank    barrier 0

These are the bytes a good algorithm must move, not what gloo's own algorithm happens to put on
the wire (a naive all-reduce may send more). All-to-all splits are not visible to the hook, so
uneven splits are counted as even ones.
"""
from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

# Mesh names in the order their label is preferred when several hold the same ranks: an axis of the
# named mesh first (a flattened mesh with one axis > 1 holds the same ranks as that axis).
AXIS_LABELS = ("tp", "sp", "dp_shard", "dp_replicate", "pp", "dp_shard_sp", "dp", "loss")

_hook_ids = itertools.count(0x0B17)  # unique per counter, so counters never remove each other's hooks


@dataclass
class AxisTraffic:
    """What one rank did on one axis: collective calls, payload bytes, bytes sent (see module doc)."""

    calls: int = 0
    payload_bytes: int = 0
    sent_bytes: float = 0.0

    def add(self, payload: int, sent: float) -> None:
        self.calls += 1
        self.payload_bytes += payload
        self.sent_bytes += sent


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def sent_bytes(op: str, group_size: int, payload: int, is_root: bool) -> float:
    """Bytes one rank sends for collective `op` (a `HookOpName` member name, e.g. "ALLREDUCE") on a
    group of `group_size` ranks with `payload` bytes (see the module docstring for the conventions)."""
    n = group_size
    if op == "ALLREDUCE":
        return 2 * (n - 1) / n * payload
    if op in ("ALLGATHER", "REDUCE_SCATTER", "ALLTOALL"):
        return (n - 1) / n * payload
    if op == "SEND":
        return float(payload)
    if op in ("BROADCAST", "SCATTER"):
        return float(payload) if is_root and n > 1 else 0.0
    if op in ("REDUCE", "GATHER"):
        return 0.0 if is_root else float(payload)
    return 0.0  # RECV, BARRIER, SPLIT, ...


def _payload(op: str, inputs, outputs) -> int:
    return _nbytes(outputs) if op in ("ALLGATHER", "RECV") else _nbytes(inputs)


def mesh_axis_groups(mesh: DeviceMesh) -> list[tuple[str, dist.ProcessGroup]]:
    """(label, group) for every process group of more than one rank that this rank belongs to,
    labelled by its set of ranks: the mesh axis (or flattened mesh) with those ranks, preferring
    the order of `AXIS_LABELS` (a flattened mesh with one axis > 1 is that axis), "world" for all
    ranks, "other" for a rank set the mesh does not have.

    Every group, not just the mesh's own: DTensor's functional collectives resolve a mesh dimension
    to the *first* group created with its ranks, which after an earlier mesh in the same process
    is that mesh's group. Labelling by ranks attributes such traffic to the right axis."""
    labels: dict[tuple[int, ...], str] = {}
    for label in AXIS_LABELS:
        sub = _submesh(mesh, label)
        if sub is not None and sub.size() > 1:
            labels.setdefault(tuple(dist.get_process_group_ranks(sub.get_group())), label)
    labels.setdefault(tuple(range(dist.get_world_size())), "world")
    return [(labels.get(tuple(dist.get_process_group_ranks(group)), "other"), group)
            for group in _process_groups() if group.size() > 1]


def _process_groups() -> list[dist.ProcessGroup]:
    """Every process group this rank belongs to (c10d keeps no public list: private registry)."""
    return [group for group in dist.distributed_c10d._world.pg_names if isinstance(group, dist.ProcessGroup)]


def _submesh(mesh: DeviceMesh, name: str) -> DeviceMesh | None:
    """`mesh[name]` for an axis or a flattened mesh, None if `mesh` has no such name."""
    try:
        return mesh[name]
    except (KeyError, RuntimeError, ValueError):
        return None


class CommCounter:
    """Context manager counting this rank's traffic per labelled process group.

        with CommCounter(mesh_axis_groups(mesh)) as counter:
            engine.forward_backward(...)
        counter.traffic["dp_shard_sp"].sent_bytes

    Hooks are removed on exit; counting costs a Python call per collective, nothing per tensor op.
    """

    def __init__(self, groups: list[tuple[str, dist.ProcessGroup]]):
        if not hasattr(dist.ProcessGroup, "register_pre_hook"):
            raise RuntimeError(f"counting bytes per process group needs ProcessGroup.register_pre_hook, "
                               f"which torch {torch.__version__} lacks; use torch 2.14 or newer")
        self.groups = groups
        self.traffic: dict[str, AxisTraffic] = {label: AxisTraffic() for label, _ in groups}
        self._lock = threading.Lock()
        self._hook_id = next(_hook_ids)

    def _hook(self, label: str, group: dist.ProcessGroup):
        size, rank = group.size(), group.rank()

        def record(args) -> None:
            op = args.name.name
            payload = _payload(op, args.input_tensors, args.output_tensors)
            with self._lock:
                self.traffic[label].add(payload, sent_bytes(op, size, payload, is_root=args.root == rank))

        return record

    def __enter__(self) -> "CommCounter":
        for label, group in self.groups:
            group.register_pre_hook(self._hook_id, self._hook(label, group))
        return self

    def __exit__(self, *exc) -> None:
        for _, group in self.groups:
            group.unregister_pre_hook(self._hook_id)

    def sent_bytes(self) -> dict[str, float]:
        """label -> bytes sent by this rank (every labelled group, zeros included)."""
        return {label: traffic.sent_bytes for label, traffic in self.traffic.items()}
