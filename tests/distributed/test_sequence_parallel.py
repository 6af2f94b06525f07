"""Ulysses sequence parallel ORBIT against one process: sp = 2 and 4, tp = 2 x sp = 2 on the
named mesh, a middle pipeline stage that passes token bands, bf16 autocast, and validation."""
import copy

import pytest
import torch
import torch.distributed as dist
from tiny_parity import BF16_RTOL, compare, fixed_batch, full, rel_err, tiny_model, train, vector, within_tolerance
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor

from orbit.models import create_model
from orbit.parallel.mesh import ParallelDims
from orbit.parallel.spawn import spawn
from orbit.models.orbit_vit_parallel import apply_sequence_parallel, apply_tensor_parallel


def average_grads_over(mesh):
    """What FSDP does over the sp ranks: each parameter's (local) gradient averaged over `mesh`."""

    def sync(model: nn.Module) -> None:
        with torch.no_grad():
            for param in model.parameters():
                grad = param.grad.to_local() if isinstance(param.grad, DTensor) else param.grad
                dist.all_reduce(grad, group=mesh.get_group())
                grad /= mesh.size()

    return sync


def parallel_model(fused: bool, tp_mesh, sp_mesh) -> nn.Module:
    model = tiny_model(fused)
    if tp_mesh is not None:
        apply_tensor_parallel(model, tp_mesh)
    return apply_sequence_parallel(model, sp_mesh)


def _sp_parity(rank, world_size):
    world = ParallelDims(world_size=world_size, dp_shard=1, sp=2, tp=2).build_mesh()
    layouts = {  # name: (tp mesh, sp mesh)
        "sp=4": (None, init_device_mesh("cpu", (4,), mesh_dim_names=("sp",))),
        "sp=2": (None, init_device_mesh("cpu", (2, 2), mesh_dim_names=("pair", "sp"))["sp"]),
        "tp=2 x sp=2": (world["tp"], world["sp"]),
    }
    errors = {}
    for fused in (True, False):
        reference = train(tiny_model(fused))
        for name, (tp_mesh, sp_mesh) in layouts.items():
            model = parallel_model(fused, tp_mesh, sp_mesh)
            errors[f"{name} fused={fused}"] = compare(train(model, sync_grads=average_grads_over(sp_mesh)), reference)
    return {"fp32": errors, "middle stage": _middle_stage(layouts["sp=2"][1]), "bf16": _bf16(world["tp"], world["sp"])}


def _middle_stage(sp_mesh) -> dict:
    """Blocks alone (a middle pipeline stage) take and return bands; summed over the sp ranks,
    their parameter gradients are the whole sequence's (no gather here, so no sp scaling)."""
    reference = tiny_model(fused=True)
    inputs, _ = fixed_batch(0)
    tokens = reference.embed(*inputs).detach()  # (B, L, D)
    upstream = torch.randn(tokens.shape, generator=torch.Generator().manual_seed(7))
    stage = apply_sequence_parallel(copy.deepcopy(nn.Sequential(*reference.blocks)), sp_mesh)
    expected = nn.Sequential(*reference.blocks)(tokens)
    (expected * upstream).sum().backward()

    band = tokens.shape[1] // sp_mesh.size()
    keep = slice(sp_mesh.get_local_rank() * band, (sp_mesh.get_local_rank() + 1) * band)
    output = stage(tokens[:, keep].contiguous())
    (output * upstream[:, keep]).sum().backward()
    grads = {name: p.grad for name, p in stage.named_parameters()}
    for grad in grads.values():
        dist.all_reduce(grad, group=sp_mesh.get_group())
    ref_grads = {name: reference.blocks.get_parameter(name).grad for name in grads}
    return {"output": rel_err(output, expected[:, keep].detach()), "grads": rel_err(vector(grads), vector(ref_grads))}


def _bf16(tp_mesh, sp_mesh) -> dict:
    """One forward + backward under bf16 autocast on tp=2 x sp=2 against one process."""
    runs = []
    for model in (parallel_model(True, tp_mesh, sp_mesh), tiny_model(fused=True)):
        inputs, target = fixed_batch(0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output = model(*inputs)
        (output.float() - target).pow(2).mean().backward()
        runs.append((output.float(), model))
    average_grads_over(sp_mesh)(runs[0][1])
    (output, model), (ref_output, reference) = runs
    grads = {n: full(p.grad) for n, p in model.named_parameters()}
    ref_grads = {n: p.grad for n, p in reference.named_parameters()}
    return {"output": rel_err(output, ref_output), "grads": rel_err(vector(grads), vector(ref_grads))}


def test_sequence_parallel_matches_one_process():
    for rank, errors in enumerate(spawn(_sp_parity, 4)):
        for case, errs in errors["fp32"].items():
            assert within_tolerance(errs), (rank, case, errs)
        assert max(errors["middle stage"].values()) < 1e-5, (rank, errors["middle stage"])
        assert max(errors["bf16"].values()) < BF16_RTOL, (rank, errors["bf16"])


class FakeMesh:
    """Validation happens before any communication, so it needs only a size."""

    def __init__(self, size: int):
        self._size = size

    def size(self) -> int:
        return self._size


def test_heads_not_divisible_by_sp_are_rejected():
    with pytest.raises(ValueError, match=r"local heads \[4\] .* not divisible by sp=3"):
        apply_sequence_parallel(tiny_model(fused=True), FakeMesh(3))


def test_tokens_not_divisible_by_sp_are_rejected():
    model = create_model("tiny", variables=("t2m",), img_size=(6, 10), patch_size=2, embed_dim=32, depth=1,
                         num_heads=4)  # 3 x 5 = 15 tokens
    with pytest.raises(ValueError, match=r"token count L=15 divisible by sp=2"):
        apply_sequence_parallel(model, FakeMesh(2))
