"""Distributed checkpoints that load onto any parallel layout (torch.distributed.checkpoint, DCP).

A checkpoint is a directory: DCP shards (every rank writes its own part of the model and of the
optimizer state) plus `extra.pt` (small replicated state written by rank 0: step, scheduler,
loader position, RNG). Keys are the fully qualified names of the plain single-process model
(`blocks.3.attn.q_proj.weight`; FSDP, activation-checkpoint and torch.compile prefixes are dropped
by torch's state-dict helpers) and optimizer state is keyed by those names too
(`state.<fqn>.exp_avg`, flattened), so a checkpoint written on (tp=2, dp_shard=2) loads on
(pp=2, sp=2), on another FSDP layout or into one process: DCP reshards each tensor on load, and a
pipeline rank asks only for the keys its stage modules hold.

Atomicity: everything is written to `<path>.tmp-<id>` and rank 0 renames it to `<path>` after all
ranks finished (a barrier). A kill at any moment leaves either the previous state or a `*.tmp-*`
directory, never a directory named like a complete checkpoint. Leftover `*.tmp-*` are garbage.

Asynchronous saves (`AsyncCheckpointWriter`) write the same files from a background thread: DCP
copies ("stages") the state first, so training may change the parameters right after `start`
returns, and its collectives run on a separate gloo group so they never interleave with the
training collectives of the main thread. DCP gathers every rank's write result on rank 0 before
rank 0 writes `.metadata`, so when rank 0's save has finished, every rank's shards are on disk and
rank 0 can publish without another barrier.
"""
from __future__ import annotations

import os
import warnings
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from orbit.atomic import move_into_place, temporary_sibling

EXTRA_FILE = "extra.pt"
METADATA_FILE = ".metadata"  # DCP's index, written last by the coordinating rank
_OPTIMIZER_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _is_rank0() -> bool:
    return not _distributed() or dist.get_rank() == 0


def _barrier() -> None:
    if _distributed():
        dist.barrier()


_NO_PROCESS_GROUP_WARNING = r"torch\.distributed is (disabled, )?unavailable or uninitialized"


@contextmanager
def _single_process_is_intended():
    """DCP warns whenever it runs without a process group, even when asked to (`no_dist=True`)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_NO_PROCESS_GROUP_WARNING)
        yield


# --- model parts <-> one module with plain FQNs -----------------------------------------------------
# torch's helpers take one module, and one optimizer may span several pipeline stages. The parts sit
# in an nn.ModuleList, which prefixes each key with the part's index; parts hold disjoint original
# names, so the prefix is dropped on the way out and restored on the way in.

def _strip_part_index(state: dict[str, Any], optimizer_keys: bool = False) -> dict[str, Any]:
    """'3.blocks.1.x' -> 'blocks.1.x' (model); with `optimizer_keys` (flattened optimizer state,
    '<section>.<part>.<fqn>.<name>'): 'state.3.blocks.1.x.exp_avg' -> 'state.blocks.1.x.exp_avg'."""
    out = {}
    for key, value in state.items():
        if not optimizer_keys:
            _, name = key.split(".", 1)
        else:
            head, _, name = key.split(".", 2)
            name = f"{head}.{name}"
        if name in out:
            raise ValueError(f"two model parts both hold {name!r}; parts must hold disjoint parameters")
        out[name] = value
    return out


def _part_index_of(parts: nn.ModuleList) -> dict[str, str]:
    """Plain FQN -> the same key with its part index, for every parameter/buffer of the parts."""
    return {key.split(".", 1)[1]: key for key in get_model_state_dict(parts)}


def _model_state(parts: nn.ModuleList) -> dict[str, Any]:
    return _strip_part_index(get_model_state_dict(parts))


def _optimizer_state(parts: nn.ModuleList, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    state = get_optimizer_state_dict(parts, optimizer, options=_OPTIMIZER_OPTIONS)
    return _strip_part_index(state, optimizer_keys=True)


def _with_part_index(state: dict[str, Any], index_of: dict[str, str], optimizer_keys: bool = False) -> dict[str, Any]:
    """The inverse of `_strip_part_index`, given `_part_index_of` the same parts."""
    if not optimizer_keys:
        return {index_of[key]: value for key, value in state.items()}
    out = {}
    for key, value in state.items():
        head, name = key.split(".", 1)
        fqn = next(fqn for fqn in _fqn_prefixes(name) if fqn in index_of)
        out[f"{head}.{index_of[fqn]}{name[len(fqn):]}"] = value
    return out


def _fqn_prefixes(name: str) -> list[str]:
    """'blocks.0.norm1.weight.exp_avg' -> longest dotted prefixes first (the FQN is one of them)."""
    pieces = name.split(".")
    return [".".join(pieces[:n]) for n in range(len(pieces) - 1, 0, -1)]


# --- save / load ----------------------------------------------------------------------------------

def shared_tmp_path(path: Path) -> Path:
    """A temporary sibling of `path`, the same on every rank (rank 0 picks it)."""
    name = [temporary_sibling(path).name]
    if _distributed():
        dist.broadcast_object_list(name, src=0)
    return path.with_name(name[0])


def publish_checkpoint(tmp: Path, path: Path) -> None:
    """Atomically give the finished directory its final name (replacing an older one of that name)."""
    move_into_place(tmp, path)


def _stage(path: Path, model_parts: list[nn.Module], optimizer: torch.optim.Optimizer,
           extra: dict[str, Any]) -> tuple[dict[str, Any], Path]:
    """Collective: this rank's state to save, and the temporary directory (made by rank 0, holding
    `extra`) it goes to before `publish_checkpoint`."""
    parts = nn.ModuleList(model_parts)
    state = {"model": _model_state(parts), "optimizer": _optimizer_state(parts, optimizer)}
    tmp = shared_tmp_path(path)
    if _is_rank0():
        tmp.mkdir(parents=True)
        torch.save(extra, tmp / EXTRA_FILE)
    _barrier()
    return state, tmp


def save_distributed(path: str | os.PathLike, model_parts: list[nn.Module], optimizer: torch.optim.Optimizer,
                     extra: dict[str, Any]) -> Path:
    """Collective: every rank writes its shards of the model parts and optimizer into `path`.

    `model_parts` are this rank's modules (the model, or its pipeline stages) after any
    parallelization; `extra` is small state, the same on every rank, saved by rank 0.
    """
    path = Path(path)
    state, tmp = _stage(path, model_parts, optimizer, extra)
    with _single_process_is_intended():
        dcp.save(state, checkpoint_id=tmp, no_dist=not _distributed())
    _barrier()  # every rank's shards and DCP's metadata are on disk
    if _is_rank0():
        publish_checkpoint(tmp, path)
    _barrier()  # nobody reads `path` before it exists
    return path


class AsyncCheckpointWriter:
    """At most one DCP save in flight; the directory is published when every rank's write finished.

    Collective like `save_distributed`: build it on every rank (it creates the gloo group its saves
    use) and call `start` on every rank at the same step. `poll()` publishes a finished save without
    waiting (call it often, e.g. every step); `wait()` blocks until the save in flight is published
    (before the next save and before exiting).
    """

    def __init__(self):
        self._group = dist.new_group(backend="gloo") if _distributed() else None
        self._pending: tuple[Future, Path, Path] | None = None
        if self._group is None:  # the warning comes from DCP's writer thread, out of reach of catch_warnings
            warnings.filterwarnings("ignore", message=_NO_PROCESS_GROUP_WARNING, module="torch.distributed")

    def start(self, path: str | os.PathLike, model_parts: list[nn.Module], optimizer: torch.optim.Optimizer,
              extra: dict[str, Any]) -> None:
        """Stage this rank's state and start writing it to `path` in the background; `extra` (small,
        the same on every rank) is written by rank 0 before this returns."""
        self.wait()
        path = Path(path)
        state, tmp = _stage(path, model_parts, optimizer, extra)
        with _single_process_is_intended():
            future = dcp.async_save(state, checkpoint_id=tmp, process_group=self._group, no_dist=not _distributed())
        self._pending = (future, tmp, path)

    @property
    def in_flight(self) -> bool:
        return self._pending is not None

    def poll(self) -> Path | None:
        """The path of the save in flight if it has finished (published by now), else None."""
        if self._pending is not None and self._pending[0].done():
            return self._finish()
        return None

    def wait(self) -> Path | None:
        """Block until the save in flight (if any) is written and published; returns its path."""
        return self._finish() if self._pending is not None else None

    def _finish(self) -> Path:
        future, tmp, path = self._pending
        self._pending = None
        future.result()  # re-raises a failed write on this rank (DCP reports any rank's failure to all)
        if _is_rank0():
            publish_checkpoint(tmp, path)
        return path


def is_complete(path: str | os.PathLike) -> bool:
    path = Path(path)
    return (path / METADATA_FILE).is_file() and (path / EXTRA_FILE).is_file()


def _require_complete(path: Path) -> None:
    if not is_complete(path):
        raise FileNotFoundError(f"{str(path)!r} is not a complete distributed checkpoint (a directory with "
                                f"{METADATA_FILE} and {EXTRA_FILE}, as written by save_distributed)")


def load_distributed(path: str | os.PathLike, model_parts: list[nn.Module],
                     optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """Collective: fill this rank's model parts (and optimizer) from `path`, whatever layout wrote it.

    Build and parallelize the model and the optimizer first, exactly as for a fresh run; each rank
    reads only the pieces it holds. Returns the `extra` dict given to `save_distributed`.
    """
    path = Path(path)
    _require_complete(path)
    parts = nn.ModuleList(model_parts)
    index_of = _part_index_of(parts)
    state = {"model": _model_state(parts)}
    if optimizer is not None:
        state["optimizer"] = _optimizer_state(parts, optimizer)
    with _single_process_is_intended():  # in place; non-tensor entries (param-group floats) are replaced
        dcp.load(state, checkpoint_id=path, no_dist=not _distributed())
    set_model_state_dict(parts, _with_part_index(state["model"], index_of))
    if optimizer is not None:
        set_optimizer_state_dict(parts, optimizer, _with_part_index(state["optimizer"], index_of, optimizer_keys=True),
                                 options=_OPTIMIZER_OPTIONS)
    return torch.load(path / EXTRA_FILE, weights_only=False)


# --- export ---------------------------------------------------------------------------------------

def consolidate(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The full (unsharded) model state dict stored in a distributed checkpoint, read in this process
    alone (no process group needed): keys match `OrbitViT.state_dict()`."""
    path = Path(path)
    _require_complete(path)
    metadata = FileSystemReader(path).read_metadata()
    model = {}
    for key, meta in metadata.state_dict_metadata.items():
        if key.startswith("model.") and isinstance(meta, TensorStorageMetadata):
            model[key.removeprefix("model.")] = torch.empty(meta.size, dtype=meta.properties.dtype)
    with _single_process_is_intended():
        dcp.load({"model": model}, checkpoint_id=path, no_dist=True)
    return model


def export_single_file(path: str | os.PathLike, out_file: str | os.PathLike) -> Path:
    """Write the model of a distributed checkpoint as one `torch.save` file, for inference and
    fine-tuning: `OrbitViT.load_state_dict(torch.load(out_file))`. Run on one process."""
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(consolidate(path), out_file)
    return out_file
