"""Every registered model family (timm's test_models.py style): forward/backward, every parameter gets
a gradient, a checkpoint round trip, and the clear error for a layout its plan does not support."""
import pytest
import torch

from orbit.config import ParallelConfig
from orbit.models.registry import family_of, get_family, list_families
from orbit.parallel.checkpoint import load_distributed, save_distributed
from orbit.parallel.mesh import parallel_dims_from
from orbit.parallel.plans import data_parallel_only
from orbit.parallel.units import wrap_units
from orbit.registry import TASKS, load_plugins
from orbit.train.task import Task

load_plugins()
FAMILIES = list_families()


def _example(name):
    family = get_family(name)
    assert family.example is not None, f"family {name!r} registers no example for the tests"
    torch.manual_seed(0)
    return family.example()


def _plan(model):
    family = family_of(model)
    return family.plan or data_parallel_only(family.name)


def test_the_core_and_the_plugins_register_families():
    assert {"orbit_vit", "downscale_vit", "elm_emulator", "mlp"} <= set(FAMILIES)


@pytest.mark.parametrize("name", FAMILIES)
def test_forward_backward_reaches_every_parameter(name):
    model, inputs = _example(name)
    assert family_of(model).name == name
    output = model(*inputs)
    assert torch.isfinite(output).all()
    output.float().pow(2).mean().backward()
    # (a gradient may be exactly zero: a key bias adds the same score to every key, which softmax ignores;
    # zero-initialized output layers stop the gradient of everything before them at the first step)
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters outside the graph: {missing}"


@pytest.mark.parametrize("name", FAMILIES)
def test_checkpoint_round_trip(name, tmp_path):
    model, inputs = _example(name)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(*inputs).float().pow(2).mean().backward()
    optimizer.step()
    save_distributed(tmp_path / "step_00000001", [model], optimizer, {"step": 1})
    fresh, _ = _example(name)
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    assert load_distributed(tmp_path / "step_00000001", [fresh], fresh_optimizer)["step"] == 1
    for (key, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), key
    model.eval(), fresh.eval()
    assert torch.equal(model(*inputs), fresh(*inputs))


@pytest.mark.parametrize("name", FAMILIES)
def test_unsupported_axes_are_refused_naming_the_family(name):
    model, _ = _example(name)
    plan = _plan(model)
    for axis in ("tp", "sp", "pp"):
        if axis in plan.supported_axes():
            continue
        dims = parallel_dims_from(ParallelConfig(**{axis: 2}), 2)
        problems = plan.problems(model, dims, ParallelConfig(**{axis: 2}), 4)
        assert problems and f"model family {name!r}" in problems[0] and f"parallel.{axis}=1" in problems[0]


@pytest.mark.parametrize("name", FAMILIES)
def test_activation_checkpointing_keeps_gradients(name):
    model, inputs = _example(name)
    plan = _plan(model)
    if plan.blocks is None:
        with pytest.raises(ValueError, match="declares none"):
            wrap_units(model, plan, activation_checkpointing=True, compile=False)
        return
    model(*inputs).float().pow(2).mean().backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    wrap_units(model, plan, activation_checkpointing=True, compile=False)
    model(*inputs).float().pow(2).mean().backward()
    for name_, param in model.named_parameters():
        key = name_.replace("_checkpoint_wrapped_module.", "")
        torch.testing.assert_close(param.grad, reference[key], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_follows_the_contract(name):
    entry = TASKS[name]
    assert issubclass(entry.cls, Task)
    assert not entry.cls.__abstractmethods__, f"task {name!r} does not define {sorted(entry.cls.__abstractmethods__)}"
