"""DeepSpeed ZeRO 1, 2, 3 (`build_deepspeed_engine`) on 2 ranks against one process: 3 AdamW steps
with active gradient clipping, each rank on its half of the global batch; also gradient
accumulation (2 micro-batches per rank), DeepSpeed's own checkpoint round trip, and the refusal of
layouts DeepSpeed cannot serve.

All engines are built in one spawn: process start-up and `import deepspeed` dominate the run time.
The first DeepSpeed engine on a machine JIT-compiles a comm op (~30 s idle, cached afterwards).
"""
import pytest
import torch

from orbit.parallel.mesh import ParallelDims
from orbit.parallel.sharding import build_deepspeed_engine, check_deepspeed_layout, deepspeed_config
from orbit.parallel.spawn import spawn
from tiny_training import (GLOBAL_BATCH, LR, adamw, first_step_grads, local_batch, mse, param_errors, rel_err,
                           tiny_model, train_steps, zero_gradient_params)

pytest.importorskip("deepspeed")

STEPS = 3
GRAD_CLIP = 0.1  # below the first step's gradient norm (~0.2), so clipping is active
# Reached here (relative L2 errors): losses ~1e-7, all parameters (one vector) ~2e-7 (6e-7 with
# accumulation), worst single tensor ~3e-6 (1.3e-5 with accumulation); the resumed loss ~1e-7.
LOSS_RTOL, PARAMS_RTOL, TENSOR_RTOL = 1e-5, 1e-5, 2e-4


@pytest.fixture(scope="module")
def reference():
    model = tiny_model()
    grads = first_step_grads(model)
    assert torch.cat([g.flatten() for g in grads.values()]).norm() > GRAD_CLIP
    losses = train_steps(model, adamw(model), range(STEPS), grad_clip=GRAD_CLIP)
    return {"losses": torch.tensor(losses), "params": {n: p.detach().clone() for n, p in model.named_parameters()},
            "skip": zero_gradient_params(grads)}


def _zero_run(dims, stage, accum, rank):
    model = tiny_model()
    micro = GLOBAL_BATCH // dims.dp // accum
    engine = build_deepspeed_engine(model, adamw(model), dims, loss_fn=mse, zero_stage=stage, grad_clip=GRAD_CLIP,
                                    micro_batch_size=micro, grad_accum_steps=accum)
    losses = []
    for step in range(STEPS):
        inputs, target = local_batch(step, rank, dims.dp)
        total = torch.zeros(())
        for k in range(accum):  # the trainer's loop: micro-batches, then one step
            rows = slice(k * micro, (k + 1) * micro)
            x, var_ids, lead_hours, var_mask = inputs
            micro_inputs = (x[rows], var_ids, lead_hours[rows], var_mask[rows])
            total += engine.forward_backward(micro_inputs, target[rows], scale=1.0 / accum) / accum
        engine.step()
        losses.append(engine.mean_over_data_ranks(total))
    return engine, torch.stack(losses)


def _deepspeed_checks(rank, world_size, save_dir):
    dims = ParallelDims(world_size=world_size)
    results = {}
    for name, stage, accum in [("zero1", 1, 1), ("zero2", 2, 1), ("zero3", 3, 1), ("zero2_accum2", 2, 2)]:
        engine, losses = _zero_run(dims, stage, accum, rank)
        results[name] = {"losses": losses, "params": engine.full_state_dict()}
    # DeepSpeed's own checkpoint (same world size): save after 2 steps, resume, the 3rd step's loss matches
    model = tiny_model()
    engine = build_deepspeed_engine(model, adamw(model), dims, loss_fn=mse, zero_stage=3, grad_clip=GRAD_CLIP,
                                    micro_batch_size=GLOBAL_BATCH // dims.dp)
    for step in range(STEPS - 1):
        engine.forward_backward(*local_batch(step, rank, dims.dp))
        engine.step()
    engine.save(save_dir, {"step": STEPS - 1})
    engine.close()
    resumed_model = tiny_model()
    resumed = build_deepspeed_engine(resumed_model, adamw(resumed_model), dims, loss_fn=mse, zero_stage=3, grad_clip=GRAD_CLIP,
                                     micro_batch_size=GLOBAL_BATCH // dims.dp)
    extra = resumed.load(save_dir)
    loss = resumed.forward_backward(*local_batch(extra["step"], rank, dims.dp))
    results["resumed"] = {"step": extra["step"], "loss": resumed.mean_over_data_ranks(loss)}
    return results


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return spawn(_deepspeed_checks, 2, str(tmp_path_factory.mktemp("ds_ckpt")))


@pytest.mark.parametrize("name", ["zero1", "zero2", "zero3", "zero2_accum2"])
def test_zero_matches_one_process(runs, reference, name):
    for run in runs:  # every rank ends with the same full parameters
        assert rel_err(run[name]["losses"], reference["losses"]) <= LOSS_RTOL
        whole, worst, skipped = param_errors(run[name]["params"], reference["params"], reference["skip"])
        assert whole <= PARAMS_RTOL and worst <= TENSOR_RTOL, (whole, worst)
        assert skipped <= 2 * STEPS * LR


def test_zero3_checkpoint_resumes_the_same_run(runs, reference):
    assert runs[0]["resumed"]["step"] == STEPS - 1
    assert rel_err(runs[0]["resumed"]["loss"], reference["losses"][-1]) <= LOSS_RTOL


@pytest.mark.parametrize("degrees", [{"dp_shard": 2, "tp": 2}, {"dp_shard": 2, "pp": 2}, {"dp_shard": 2, "sp": 2},
                                     {"dp_replicate": 2, "dp_shard": 2}])
def test_deepspeed_refuses_non_data_parallel_layouts(degrees):
    with pytest.raises(ValueError, match="pure data-parallel layouts only"):
        check_deepspeed_layout(ParallelDims(world_size=4, **degrees))


def test_deepspeed_config_is_explicit_and_validated():
    config = deepspeed_config(zero_stage=2, grad_clip=0.0, bf16=False, micro_batch_size=3, world_size=4,
                              grad_accum_steps=2)
    assert config["gradient_clipping"] == 0.0 and config["train_batch_size"] == 24
    assert config["zero_optimization"]["stage"] == 2
    with pytest.raises(ValueError, match="zero_stage must be 0, 1, 2 or 3, got 4"):
        deepspeed_config(zero_stage=4, grad_clip=1.0, bf16=False, micro_batch_size=1, world_size=1)
