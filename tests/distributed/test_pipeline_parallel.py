"""Pipeline parallelism (GPipe, 1F1B, interleaved 1F1B) against one process: same losses, gradients, parameters.

Process start-up dominates on a small CPU, so each world size is one spawn that runs all its layouts.
Tolerances (fp32), reached here with ~10x margin: losses 1e-5 relative (seen 1.2e-7); first-step
gradients 1e-5 relative + 1e-7 x the largest gradient (seen 2.6e-7 x); predictions 1e-5 relative.
Parameters after 3 AdamW steps: 1e-5 relative + 1e-5 absolute (seen 2.7e-6 absolute, 0.3% of one
lr step). The absolute part is needed: where a gradient is ~1e-9 (below Adam's eps), including the
key biases that attention ignores in theory (`k_proj.bias`, `k_norm.bias`), fp32 rounding noise
changes Adam's step by ~1e-6. Gradient checks, not parameter checks, catch a wrong loss scale,
since Adam is blind to it.
"""
import pytest
import torch
import torch.nn.functional as F

from orbit.models.registry import create_model
from orbit.parallel.mesh import ParallelDims
from orbit.models.orbit_vit_parallel import MODEL_INPUTS, check_pipeline_inputs, split_model
from orbit.parallel.pipeline import build_schedule, pipeline_forward, pipeline_step, stage_block_ranges
from orbit.parallel.spawn import spawn

VARIABLES = ("t2m", "u10", "v10", "z500")
STEPS, LR = 3, 1e-3
LAYOUTS_2 = [("gpipe", 2, 1), ("gpipe", 4, 1), ("1f1b", 2, 1), ("1f1b", 4, 1), ("interleaved_1f1b", 4, 2)]
LAYOUTS_4 = [("1f1b", 4, 1), ("gpipe", 4, 1)]


def _model():
    torch.manual_seed(0)
    return create_model("tiny", variables=VARIABLES, img_size=(8, 16), patch_size=2, embed_dim=32, depth=4,
                        num_heads=4)


def _batch(size=4):
    """inputs as a task gives them (batch-first; var_ids None = the whole vocabulary in order), target."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(size, len(VARIABLES), 8, 16, generator=gen)
    lead_hours = torch.tensor([6.0, 12.0, 24.0, 48.0])[:size]
    var_mask = torch.ones(size, len(VARIABLES), dtype=torch.bool)
    var_mask[1, 2] = False
    return (x, None, lead_hours, var_mask), torch.randn(size, len(VARIABLES), 8, 16, generator=gen)


def _with_var_ids(inputs):
    return (inputs[0], torch.arange(len(VARIABLES)), *inputs[2:])


def _train(read_grads, params, inputs, target, step):
    """3 AdamW steps; returns the losses and the gradients of the first step."""
    optimizer = torch.optim.AdamW(params, lr=LR)
    losses, first_grads = [], None
    for i in range(STEPS):
        optimizer.zero_grad()
        losses.append(step(inputs, target))
        if i == 0:
            first_grads = read_grads()
        optimizer.step()
    return losses, first_grads


@pytest.fixture(scope="module")
def reference():
    """One process, whole batch: losses, first-step gradients, final parameters, final predictions."""
    model = _model()
    inputs, target = _batch()

    def step(inputs, target):
        loss = F.mse_loss(model(*_with_var_ids(inputs)), target)
        loss.backward()
        return loss.item()

    grads = lambda: {name: p.grad.clone() for name, p in model.named_parameters()}  # noqa: E731
    losses, first_grads = _train(grads, list(model.parameters()), inputs, target, step)
    with torch.no_grad():
        prediction = model(*_with_var_ids(_batch(3)[0]))
    return {"losses": losses, "grads": first_grads, "state": model.state_dict(), "prediction": prediction,
            "keys": set(model.state_dict())}


def _run_layout(pp_mesh, schedule, microbatches, stages_per_rank):
    stages = split_model(_model(), pp_mesh, stages_per_rank=stages_per_rank)
    pipeline = build_schedule(stages, pp_mesh, schedule=schedule, microbatches=microbatches, loss_fn=F.mse_loss, input_names=MODEL_INPUTS,
                              check_inputs=check_pipeline_inputs)
    params = [p for stage in stages for p in stage.parameters()]
    named = lambda: {n: p.grad.clone() for stage in stages for n, p in stage.named_parameters()}  # noqa: E731
    inputs, target = _batch()

    # gradient accumulation: two half-weight passes leave the gradients of one full pass
    pipeline_step(pipeline, pp_mesh, inputs, target, scale=0.5)
    pipeline_step(pipeline, pp_mesh, inputs, target, scale=0.5)
    accumulated = named()

    losses, first_grads = _train(named, params, inputs, target,
                                 lambda i, t: pipeline_step(pipeline, pp_mesh, i, t).item())
    for stage in stages:
        stage.eval()
    prediction = pipeline_forward(pipeline, pp_mesh, _batch(3)[0])  # a batch size the schedule never saw
    return {"losses": losses, "grads": first_grads, "accumulated": accumulated,
            "state": {k: v for stage in stages for k, v in stage.state_dict().items()},
            "stage_keys": {stage.index: sorted(stage.state_dict()) for stage in stages},
            "prediction": prediction}


def _error_message(what, call):
    try:
        call()
    except ValueError as err:
        return str(err)
    raise AssertionError(f"no ValueError for {what}")


def _validation(pp_mesh):
    """Messages of the errors raised before any work (every rank raises the same, no hang)."""
    model = _model()
    stages = split_model(model, pp_mesh)
    inputs, target = _batch()
    pipeline = build_schedule(stages, pp_mesh, schedule="1f1b", microbatches=2, loss_fn=F.mse_loss, input_names=MODEL_INPUTS,
                              check_inputs=check_pipeline_inputs)
    odd_inputs = (inputs[0][:3], None, inputs[2][:3], inputs[3][:3])
    return {
        "too_many_stages": _error_message("6 stages", lambda: split_model(model, pp_mesh, stages_per_rank=3)),
        "unknown": _error_message("name", lambda: build_schedule(stages, pp_mesh, schedule="zb", microbatches=2,
                                                          loss_fn=F.mse_loss, input_names=MODEL_INPUTS,
                              check_inputs=check_pipeline_inputs)),
        "few_microbatches": _error_message("1 microbatch", lambda: build_schedule(
            stages, pp_mesh, schedule="gpipe", microbatches=1, loss_fn=F.mse_loss, input_names=MODEL_INPUTS,
                              check_inputs=check_pipeline_inputs)),
        "interleaved_one_stage": _error_message("1 stage", lambda: build_schedule(
            stages, pp_mesh, schedule="interleaved_1f1b", microbatches=2, loss_fn=F.mse_loss, input_names=MODEL_INPUTS,
                              check_inputs=check_pipeline_inputs)),
        "single_two_stages": _error_message("2 stages", lambda: build_schedule(
            split_model(model, pp_mesh, stages_per_rank=2), pp_mesh, schedule="1f1b", microbatches=4,
            loss_fn=F.mse_loss, input_names=MODEL_INPUTS,
                              check_inputs=check_pipeline_inputs)),
        "odd_batch": _error_message("batch 3", lambda: pipeline_step(pipeline, pp_mesh, odd_inputs, target[:3])),
        "var_ids": _error_message("var_ids", lambda: pipeline_step(pipeline, pp_mesh, _with_var_ids(inputs), target)),
    }


def _pipeline_worker(rank, world_size, layouts, with_validation):
    pp_mesh = ParallelDims(world_size=world_size, pp=world_size, dp_shard=1).build_mesh("cpu")["pp"]
    results = {layout: _run_layout(pp_mesh, *layout) for layout in layouts}
    if with_validation:
        results["validation"] = _validation(pp_mesh)
    return results


def _merged(per_rank, layout, key):
    merged = {}
    for result in per_rank:
        merged.update(result[layout][key])
    return merged


def _assert_matches(per_rank, layout, reference):
    for result in per_rank:  # every pp rank reports the loss and the prediction
        torch.testing.assert_close(result[layout]["losses"], reference["losses"], rtol=1e-5, atol=0)
        torch.testing.assert_close(result[layout]["prediction"], reference["prediction"], rtol=1e-5, atol=1e-6)
    grad_scale = max(g.abs().max() for g in reference["grads"].values())
    for key in ("grads", "accumulated"):
        grads = _merged(per_rank, layout, key)
        assert set(grads) == set(reference["grads"])
        for name, grad in grads.items():
            torch.testing.assert_close(grad, reference["grads"][name], rtol=1e-5, atol=1e-7 * grad_scale,
                                       msg=lambda m: f"{layout} {key} {name}: {m}")
    state = _merged(per_rank, layout, "state")
    assert set(state) == reference["keys"]
    for name, value in state.items():
        torch.testing.assert_close(value, reference["state"][name], rtol=1e-5, atol=1e-5,
                                   msg=lambda m: f"{layout} {name}: {m}")


def _assert_fqns_preserved(per_rank, layout, reference):
    """Each stage's state-dict keys are exactly the full model's names of the parts it holds."""
    stage_keys = {}
    for result in per_rank:
        stage_keys.update(result[layout]["stage_keys"])
    last = max(stage_keys)
    for index, blocks in enumerate(stage_block_ranges(4, last + 1)):
        prefixes = [f"blocks.{i}." for i in blocks]
        prefixes += ["patch_embed.", "var_embed.", "aggregation.", "lead_embed."] if index == 0 else []
        prefixes += ["norm.", "head."] if index == last else []
        expected = sorted(k for k in reference["keys"] if k.startswith(tuple(prefixes)))
        assert stage_keys[index] == expected, f"{layout} stage {index}"
    assert sorted(k for keys in stage_keys.values() for k in keys) == sorted(reference["keys"])


@pytest.fixture(scope="module")
def two_ranks():
    return spawn(_pipeline_worker, 2, LAYOUTS_2, True)


@pytest.mark.parametrize("layout", LAYOUTS_2, ids=lambda layout: "-".join(map(str, layout)))
def test_two_stage_pipeline_matches_one_process(two_ranks, reference, layout):
    _assert_matches(two_ranks, layout, reference)
    _assert_fqns_preserved(two_ranks, layout, reference)


def test_four_stage_pipeline_matches_one_process(reference):
    four_ranks = spawn(_pipeline_worker, 4, LAYOUTS_4, False)
    for layout in LAYOUTS_4:
        _assert_matches(four_ranks, layout, reference)
        _assert_fqns_preserved(four_ranks, layout, reference)


def test_invalid_settings_are_rejected_before_any_work(two_ranks):
    for messages in (result["validation"] for result in two_ranks):
        assert "4 blocks" in messages["too_many_stages"] and "6 pipeline stages" in messages["too_many_stages"]
        assert "'zb'" in messages["unknown"] and "interleaved_1f1b" in messages["unknown"]
        assert "microbatches=1" in messages["few_microbatches"] and "2 pipeline stages" in messages["few_microbatches"]
        assert "stages_per_rank >= 2" in messages["interleaved_one_stage"]
        assert "has 2" in messages["single_two_stages"]
        assert "3 samples" in messages["odd_batch"] and "microbatches=2" in messages["odd_batch"]
        assert "var_ids=None" in messages["var_ids"] and "(4,)" in messages["var_ids"]


@pytest.mark.parametrize("depth, stages, sizes", [(4, 2, [2, 2]), (7, 3, [2, 2, 3]), (6, 4, [1, 1, 2, 2]),
                                                  (3, 3, [1, 1, 1])])
def test_blocks_split_contiguously_with_extras_on_later_stages(depth, stages, sizes):
    ranges = stage_block_ranges(depth, stages)
    assert [len(r) for r in ranges] == sizes
    assert [i for r in ranges for i in r] == list(range(depth))
