"""Sharded data parallelism: FSDP2 / HSDP over the mesh's data axes, or DeepSpeed ZeRO.

FSDP2 (`fully_shard`) is the default engine: it composes with DTensor tensor parallelism on the
"tp" axis and with pipeline stages (each rank shards only its stage modules), and it performs the
gradient-sync rule of the engine contract by itself: gradients are averaged over "dp_shard_sp"
(and over "dp_replicate" when HSDP replicates shard groups).

DeepSpeed ZeRO is offered for pure data-parallel layouts only (`parallel.engine: deepspeed`): its
engine owns the model, the optimizer step and gradient clipping, so it cannot be stacked with
our TP/SP/PP modules. `ZeroEngine` adapts it to the trainer's engine interface.

A ZeroEngine checkpoint directory holds DeepSpeed's own sharded state under `deepspeed/` (resumes on
the same world size and ZeRO stage only) beside a DCP copy of the full model weights and `extra.pt`,
so it is a complete checkpoint for `--resume auto` and `export_single_file` like any other.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from orbit.parallel.checkpoint import EXTRA_FILE, publish_checkpoint, shared_tmp_path
from orbit.parallel.engine import DEEPSPEED_STATE_DIR, LossFn, to_device
from orbit.parallel.mesh import ParallelDims
from orbit.parallel.plans import ParallelPlan


def data_parallel_mesh(mesh: DeviceMesh, dims: ParallelDims) -> DeviceMesh:
    """The mesh FSDP shards over: 1-D "dp_shard_sp", or 2-D ("dp_replicate", "dp_shard_sp") for HSDP."""
    if dims.dp_replicate > 1:
        return mesh["dp_replicate", "dp_shard_sp"]
    return mesh["dp_shard_sp"]


def apply_fsdp(modules: list[nn.Module], mesh: DeviceMesh, dims: ParallelDims, plan: ParallelPlan, *,
               param_dtype: torch.dtype | None = None, reduce_dtype: torch.dtype | None = torch.float32,
               reshard_after_forward: bool = True) -> bool:
    """Shard each of the plan's units (e.g. transformer blocks), then each module root, over the
    data-parallel mesh (in place).

    `modules` are this rank's model parts (the whole model, or its pipeline stages), possibly with
    DTensor TP parameters on the "tp" axis already. Units are sharded separately so only one unit's
    full parameters exist at a time; the root unit holds the rest (embeddings, aggregation, head).
    A unit wrapped for activation checkpointing or compile is sharded as the wrapper.
    `param_dtype=torch.bfloat16` computes in bf16 from fp32 master shards; gradients are reduced
    in `reduce_dtype`. `reshard_after_forward=False` keeps blocks gathered between forward and
    backward (fewer all-gathers, e.g. across pipeline microbatches, at the cost of memory).
    Returns False (nothing done) when the data-parallel mesh has a single rank.
    """
    dp_mesh = data_parallel_mesh(mesh, dims)
    if dp_mesh.size() == 1:
        return False
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    for module in modules:
        units = plan.unit_container(module)
        for unit in (units.children() if units is not None else ()):
            fully_shard(unit, mesh=dp_mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
        fully_shard(module, mesh=dp_mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    return True


# ---------------------------------------------------------------------------------- DeepSpeed ZeRO

def check_deepspeed_layout(dims: ParallelDims) -> None:
    """DeepSpeed ZeRO shards over every rank as one data-parallel group: no other axis may be on."""
    others = {axis: getattr(dims, axis) for axis in ("pp", "dp_replicate", "sp", "tp") if getattr(dims, axis) > 1}
    if others:
        raise ValueError(
            f"parallel.engine 'deepspeed' supports pure data-parallel layouts only, i.e. dp_shard = world size "
            f"({dims.world_size}) with pp = dp_replicate = sp = tp = 1; got {others}. Use parallel.engine 'fsdp' "
            "for tensor, sequence or pipeline parallelism and for HSDP (dp_replicate > 1)")


def deepspeed_config(*, zero_stage: int, grad_clip: float, bf16: bool, micro_batch_size: int,
                     world_size: int, grad_accum_steps: int = 1) -> dict[str, Any]:
    """The DeepSpeed config dict; every setting we rely on is explicit (its defaults are GPU-minded)."""
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {zero_stage!r}")
    if grad_clip < 0:
        raise ValueError(f"grad_clip must be >= 0 (0 = no clipping), got {grad_clip}")
    for name, value in (("micro_batch_size", micro_batch_size), ("grad_accum_steps", grad_accum_steps)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum_steps,
        "train_batch_size": micro_batch_size * grad_accum_steps * world_size,
        "gradient_clipping": float(grad_clip),  # DeepSpeed's default would be 1.0
        # ZeRO-3 keeps parameters under 1e5 elements whole by default; a small model would then not be
        # sharded at all, and (DeepSpeed 0.19.8) reloading its ZeRO-3 checkpoint broke the backward pass.
        "zero_optimization": {"stage": zero_stage, "stage3_param_persistence_threshold": 0},
        "bf16": {"enabled": bool(bf16)},
        "fp16": {"enabled": False},
        "zero_allow_untested_optimizer": True,  # a plain torch AdamW: no JIT-compiled CPU Adam kernel
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


class ZeroEngine:
    """A DeepSpeed ZeRO engine behind the trainer's engine interface (see orbit/parallel/engine.py).

    Per optimizer step the trainer calls `forward_backward` `grad_accum_steps` times, then `step()`
    (which clips, applies the optimizer and zeroes gradients inside DeepSpeed) instead of
    `clip_grad_norm_` + `optimizer.step()`. An LR scheduler built on the torch optimizer passed in
    (`optimizer`) keeps working (ZeRO steps that same optimizer on its flat partitions).
    """

    distributed = True
    # DeepSpeed computes the gradient norm inside its own step, after which the update is applied:
    # the trainer cannot discard a non-finite update (train.nonfinite=skip), only stop after it.
    grad_norm_before_step = False
    supports_async_checkpoint = False  # DeepSpeed writes its own state synchronously

    def __init__(self, engine: Any, optimizer: torch.optim.Optimizer, grad_clip: float, loss_fn: LossFn):
        self.engine = engine
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.grad_clip = grad_clip
        self.model = engine.module
        self.parts = [engine.module]
        self.dp_rank = dist.get_rank()  # every rank is a data-parallel replica (check_deepspeed_layout)
        self.dp_size = dist.get_world_size()
        self.is_main = self.dp_rank == 0

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.model.parameters()

    def train(self, mode: bool = True) -> None:
        self.engine.train(mode)

    def forward(self, inputs: tuple) -> Any:
        return self.engine(*to_device(inputs, self.engine.device))

    def forward_backward(self, inputs: tuple, batch: Any, scale: float | None = None) -> torch.Tensor:
        """Loss of the local micro-batch (detached). DeepSpeed divides the loss by its
        `gradient_accumulation_steps` itself, so `scale`, if given, must equal 1 / that count."""
        accum = self.engine.gradient_accumulation_steps()
        if scale is not None and abs(scale * accum - 1.0) > 1e-12:
            raise ValueError(f"DeepSpeed scales each micro-batch loss by 1/gradient_accumulation_steps = 1/{accum}; "
                             f"got scale {scale}. Build the engine with grad_accum_steps = 1/scale")
        device = self.engine.device
        loss = self.loss_fn(self.engine(*to_device(inputs, device)), to_device(batch, device))
        self.engine.backward(loss)
        if not self.engine.is_gradient_accumulation_boundary():
            self.engine.step()  # DeepSpeed's protocol: a step per micro-batch, applied at the boundary only
        return loss.detach()

    def step(self) -> torch.Tensor:
        """Clip, update and zero the gradients; returns the global gradient norm before clipping."""
        if not self.engine.is_gradient_accumulation_boundary():
            raise RuntimeError("ZeroEngine.step() called before the last micro-batch of the accumulation window")
        if self.engine.zero_optimization_stage() == 0:  # plain data parallel: DeepSpeed keeps no norm
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads) if grads else None
            self.engine.step()
        else:
            self.engine.step()
            norm = self.engine.get_global_grad_norm()
        return torch.as_tensor(float("nan") if norm is None else norm, dtype=torch.float32)

    def optimizer_step(self, max_norm: float) -> torch.Tensor:
        """The trainer's optimizer step: `step()`, whose clipping DeepSpeed fixed at initialization."""
        if max_norm != self.grad_clip:
            raise ValueError(f"this DeepSpeed engine clips gradients to {self.grad_clip} (0 = off), set when it was "
                             f"built; got max_norm {max_norm}. Build it with grad_clip={max_norm}")
        return self.step()

    def finish_checkpoint(self, wait: bool) -> None:
        """Saves are synchronous: nothing is ever in flight."""
        return None

    def mean_over_data_ranks(self, value: torch.Tensor) -> torch.Tensor:
        value = value.detach().to(self.engine.device, copy=True)
        dist.all_reduce(value, op=dist.ReduceOp.AVG)
        return value

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The plain model state dict (FQNs of the unwrapped model) on every rank; ZeRO-3 gathers
        each partitioned parameter collectively, so all ranks must call this."""
        if self.engine.zero_optimization_stage() < 3:
            return {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        from deepspeed import zero

        with zero.GatheredParameters(list(self.model.parameters()), modifier_rank=None):
            return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def save(self, path: str | os.PathLike, extra: dict[str, Any]) -> None:
        """DeepSpeed's own sharded checkpoint (same world size to resume); `extra` rides along."""
        self.engine.save_checkpoint(str(path), tag="state", client_state={"extra": extra})

    def load(self, path: str | os.PathLike) -> dict[str, Any]:
        _, client_state = self.engine.load_checkpoint(str(path), tag="state")
        return client_state["extra"]

    def _layout(self) -> dict[str, int]:
        return {"world_size": dist.get_world_size(), "zero_stage": self.engine.zero_optimization_stage()}

    def save_checkpoint(self, path: str | os.PathLike, extra: dict[str, Any], *, asynchronous: bool = False) -> Path:
        """Collective, atomic (as `save_distributed`): DeepSpeed's state under `deepspeed/`, the full
        model weights as DCP (`model.<fqn>`, for export) and `extra` in `extra.pt`."""
        if asynchronous:
            raise ValueError("parallel.engine 'deepspeed' saves checkpoints synchronously only; set "
                             "train.async_checkpoint=false")
        path = Path(path)
        tmp = shared_tmp_path(path)
        if self.is_main:
            tmp.mkdir(parents=True)
        dist.barrier()
        weights = self.full_state_dict()  # collective under ZeRO-3
        self.save(tmp / DEEPSPEED_STATE_DIR, extra)
        dcp.save({"model": weights}, checkpoint_id=tmp)  # replicated tensors: DCP writes each once
        if self.is_main:
            (tmp / DEEPSPEED_STATE_DIR / "layout.json").write_text(json.dumps(self._layout()))
            torch.save(extra, tmp / EXTRA_FILE)
        dist.barrier()
        if self.is_main:
            publish_checkpoint(tmp, path)
        dist.barrier()
        return path

    def load_checkpoint(self, path: str | os.PathLike) -> dict[str, Any]:
        """Collective: resume DeepSpeed's model and optimizer state from `save_checkpoint`'s `path`,
        written on the same world size and ZeRO stage; returns its `extra`."""
        state_dir = Path(path) / DEEPSPEED_STATE_DIR
        if not state_dir.is_dir():
            raise ValueError(f"checkpoint {str(path)!r} has no {DEEPSPEED_STATE_DIR}/ state: it was not written by "
                             "parallel.engine 'deepspeed', which resumes only from its own checkpoints; resume it "
                             "with parallel.engine 'fsdp'")
        saved = json.loads((state_dir / "layout.json").read_text())
        if saved != self._layout():
            raise ValueError(f"DeepSpeed checkpoint {str(path)!r} was written with {saved}; this run has "
                             f"{self._layout()}. DeepSpeed resumes only on the same world size and ZeRO stage")
        return self.load(state_dir)

    def close(self) -> None:
        """Release DeepSpeed's hooks and buffers (needed before another ZeRO-3 engine in this process)."""
        self.engine.destroy()


def build_deepspeed_engine(model: nn.Module, optimizer: torch.optim.Optimizer, dims: ParallelDims, *,
                           loss_fn: LossFn, zero_stage: int, grad_clip: float, bf16: bool = False, micro_batch_size: int,
                           grad_accum_steps: int = 1) -> ZeroEngine:
    """Wrap `model` + a torch `optimizer` (built on `model`'s parameters) in DeepSpeed ZeRO.

    Needs an initialized default process group (gloo on CPU; without CUDA `DS_ACCELERATOR` defaults
    to cpu); every rank is one data-parallel replica. `grad_clip=0` disables clipping. The first
    call on a machine JIT-compiles DeepSpeed's shared-memory comm op (~30 s on an idle 2-core CPU,
    cached in ~/.cache/torch_extensions).
    """
    check_deepspeed_layout(dims)
    if dist.is_initialized() and dist.get_world_size() != dims.world_size:
        raise ValueError(f"ParallelDims is for world size {dims.world_size}, but the process group has "
                         f"{dist.get_world_size()} ranks")
    config = deepspeed_config(zero_stage=zero_stage, grad_clip=grad_clip, bf16=bf16, micro_batch_size=micro_batch_size,
                              world_size=dims.world_size, grad_accum_steps=grad_accum_steps)
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # read when deepspeed is first imported
    import deepspeed  # optional dependency (`pip install orbit[deepspeed]`), slow to import

    deepspeed.init_distributed(dist_backend=dist.get_backend() if dist.is_initialized() else "gloo")
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    return ZeroEngine(engine, optimizer, grad_clip, loss_fn)
