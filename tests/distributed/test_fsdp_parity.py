"""FSDP2 / HSDP (`apply_fsdp`) against one process: 3 AdamW steps of a tiny ORBIT, each data rank
on its slice of the global batch; per-step losses (mean over data ranks) and final full parameters
must equal the single-process run on the whole batch. Also bf16 mixed precision, and the unit
selection (blocks behind activation-checkpoint wrappers are sharded as units)."""
import pytest
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule

from orbit.models.orbit_vit_parallel import ORBIT_VIT_PLAN
from orbit.parallel.mesh import ParallelDims
from orbit.parallel.sharding import apply_fsdp
from orbit.parallel.units import wrap_units
from orbit.parallel.spawn import spawn
from tiny_training import (LR, adamw, first_step_grads, param_errors, rel_err, tiny_model, train_steps,
                           zero_gradient_params)

STEPS = 3
# Reached here in fp32 (relative L2 errors): losses ~7e-8, all parameters (one vector) <= ~1e-6,
# worst single tensor <= ~3e-5 (AdamW divides each element by its own gradient scale).
FP32_LOSS_RTOL, FP32_PARAMS_RTOL, FP32_TENSOR_RTOL = 1e-5, 1e-5, 2e-4
# bf16 compute (fp32 master weights and gradient reduction) against the fp32 run; reached: losses
# ~3e-4, all parameters ~2e-2 (AdamW turns bf16 gradient noise into steps of ~lr on small gradients).
BF16_LOSS_RTOL, BF16_PARAMS_RTOL = 5e-3, 5e-2


@pytest.fixture(scope="module")
def reference():
    model = tiny_model()
    skip = zero_gradient_params(first_step_grads(model))
    losses = train_steps(model, adamw(model), range(STEPS))
    return {"losses": torch.tensor(losses), "params": {n: p.detach().clone() for n, p in model.named_parameters()},
            "skip": skip}


def _fsdp_run(dims: ParallelDims, param_dtype) -> dict:
    mesh = dims.build_mesh("cpu")
    model = tiny_model()
    assert apply_fsdp([model], mesh, dims, ORBIT_VIT_PLAN, param_dtype=param_dtype)
    optimizer = adamw(model)
    losses = torch.tensor(train_steps(model, optimizer, range(STEPS), mesh["dp"].get_local_rank(), dims.dp))
    dist.all_reduce(losses, op=dist.ReduceOp.AVG, group=mesh["dp"].get_group())
    params = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {"losses": losses, "params": params, "local_numel": sum(p.to_local().numel() for p in model.parameters()),
            "numel": sum(p.numel() for p in model.parameters())}


def _units_report(dims: ParallelDims) -> dict:
    model = tiny_model()
    wrap_units(model, ORBIT_VIT_PLAN, activation_checkpointing=True, compile=False)
    apply_fsdp([model], dims.build_mesh("cpu"), dims, ORBIT_VIT_PLAN)
    return {"units": [type(b).__name__ for b in model.blocks if isinstance(b, FSDPModule)],
            "root": isinstance(model, FSDPModule), "keys": sorted(model.state_dict())}


def _no_op_report(dims: ParallelDims) -> bool:
    model = tiny_model()
    return not apply_fsdp([model], dims.build_mesh("cpu"), dims, ORBIT_VIT_PLAN) and not isinstance(model, FSDPModule)


def _all_checks(rank, world_size, checks):
    """Several checks in one spawn (process start-up dominates): name -> (function, degrees, *args)."""
    return {name: fn(ParallelDims(world_size=world_size, **degrees), *args)
            for name, (fn, degrees, *args) in checks.items()}


@pytest.fixture(scope="module")
def two_ranks():
    return spawn(_all_checks, 2, {
        "dp_shard2": (_fsdp_run, {"dp_shard": 2}, None),
        "replicate2": (_fsdp_run, {"dp_replicate": 2, "dp_shard": 1}, None),  # HSDP with shard groups of 1 (DDP)
        "bf16": (_fsdp_run, {"dp_shard": 2}, torch.bfloat16),
        "units": (_units_report, {"dp_shard": 2}),
        "tp_only": (_no_op_report, {"dp_shard": 1, "tp": 2}),  # data-parallel mesh of one rank
    })


@pytest.fixture(scope="module")
def four_ranks():
    return spawn(_all_checks, 4, {
        "dp_shard4": (_fsdp_run, {"dp_shard": 4}, None),
        "hsdp2x2": (_fsdp_run, {"dp_replicate": 2, "dp_shard": 2}, None),  # shard over pairs, replicate across
    })


@pytest.mark.parametrize("world, layout, shard", [(2, "dp_shard2", 2), (2, "replicate2", 1), (4, "dp_shard4", 4),
                                                  (4, "hsdp2x2", 2)])
def test_fsdp_matches_one_process(request, reference, world, layout, shard):
    runs = [checks[layout] for checks in request.getfixturevalue("two_ranks" if world == 2 else "four_ranks")]
    run = runs[0]
    assert rel_err(run["losses"], reference["losses"]) <= FP32_LOSS_RTOL
    whole, worst, skipped = param_errors(run["params"], reference["params"], reference["skip"])
    assert whole <= FP32_PARAMS_RTOL and worst <= FP32_TENSOR_RTOL, (whole, worst)
    assert skipped <= 2 * STEPS * LR  # zero-gradient parameters: at most ~lr per AdamW step apart
    # each rank holds 1/shard of every parameter (up to the padding of uneven dim-0 splits)
    assert all(r["numel"] / shard <= r["local_numel"] <= r["numel"] / shard * 1.1 for r in runs)


def test_fsdp_bf16_mixed_precision_tracks_fp32(two_ranks, reference):
    run = two_ranks[0]["bf16"]
    assert all(p.dtype == torch.float32 for p in run["params"].values())  # master weights stay fp32
    loss_err = rel_err(run["losses"], reference["losses"])
    assert 1e-6 < loss_err <= BF16_LOSS_RTOL  # bf16 did run (not bit-equal to fp32) and stays close
    whole, _, _ = param_errors(run["params"], reference["params"], reference["skip"])
    assert whole <= BF16_PARAMS_RTOL


def test_fsdp_shards_wrapped_blocks_and_keeps_plain_names(two_ranks):
    report = two_ranks[0]["units"]
    assert report["root"] and len(report["units"]) == 2 and all("CheckpointWrapper" in u for u in report["units"])
    assert report["keys"] == sorted(tiny_model().state_dict())


def test_fsdp_is_a_no_op_when_the_data_parallel_mesh_has_one_rank(two_ranks):
    assert all(checks["tp_only"] for checks in two_ranks)
