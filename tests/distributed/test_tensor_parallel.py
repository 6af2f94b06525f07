"""Tensor parallel ORBIT (tp = 2 and 4, both front ends, QK-norm) against one process: outputs,
gradients, and 3 AdamW steps (losses and final parameters), fp32 and bf16 autocast."""
import pytest
import torch
from tiny_parity import BF16_RTOL, compare, fixed_batch, full, rel_err, tiny_model, train, vector, within_tolerance
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor

from orbit.parallel.spawn import spawn
from orbit.models.orbit_vit_parallel import apply_tensor_parallel

def _tp_parity(rank, world_size):
    """tp=4 over all ranks, and tp=2 within each pair of ranks, against the same reference."""
    meshes = {4: init_device_mesh("cpu", (4,), mesh_dim_names=("tp",)),
              2: init_device_mesh("cpu", (2, 2), mesh_dim_names=("pair", "tp"))["tp"]}
    errors = {}
    for fused in (True, False):
        reference = train(tiny_model(fused))
        for tp, mesh in meshes.items():
            sharded = apply_tensor_parallel(tiny_model(fused), mesh)
            assert isinstance(sharded.blocks[0].attn.q_proj.weight, DTensor)
            assert isinstance(sharded.aggregation.query, DTensor)
            errors[f"tp={tp} fused={fused}"] = compare(train(sharded), reference)
    errors["bf16"] = _bf16_parity(meshes[2])
    return errors


def _bf16_parity(mesh) -> dict:
    """One forward + backward under bf16 autocast, tp against one process under the same autocast."""
    runs = []
    for model in (apply_tensor_parallel(tiny_model(fused=True), mesh), tiny_model(fused=True)):
        inputs, target = fixed_batch(0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output = model(*inputs)
        (output.float() - target).pow(2).mean().backward()
        runs.append((output.float(), {n: full(p.grad) for n, p in model.named_parameters()}))
    (output, grads), (ref_output, ref_grads) = runs
    return {"output": rel_err(output, ref_output), "grads": rel_err(vector(grads), vector(ref_grads))}


def test_tensor_parallel_matches_one_process():
    for rank, errors in enumerate(spawn(_tp_parity, 4)):
        bf16 = errors.pop("bf16")
        assert max(bf16.values()) < BF16_RTOL, (rank, bf16)
        for case, errs in errors.items():
            assert within_tolerance(errs), (rank, case, errs)


def test_heads_not_divisible_by_tp_are_rejected():
    class FakeMesh:  # validation runs before any communication
        def size(self):
            return 3

    with pytest.raises(ValueError, match=r"tp=3 must divide every head count.*num_heads of Block 0': 4"):
        apply_tensor_parallel(tiny_model(fused=True), FakeMesh())
