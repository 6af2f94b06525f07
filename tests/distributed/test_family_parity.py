"""Every registered model family on a 2-rank data-parallel layout (FSDP2, dp_shard=2) through the engine,
against one process: the loss (mean over data ranks), the whole gradient vector before any optimizer
step and the global gradient norm equal the single-process ones on the whole batch."""
import pytest
import torch

from orbit.config import ParallelConfig
from orbit.models.registry import family_of, get_family, list_families
from orbit.parallel.parallelize import build_engine
from orbit.parallel.plans import data_parallel_only
from orbit.parallel.spawn import spawn
from orbit.registry import load_plugins

load_plugins()
FAMILIES = list_families()
RTOL = 1e-5  # relative L2 error reached here in fp32: ~1e-7


def _loss(output, batch):
    return output.float().pow(2).mean()


def _full(tensor):
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def _gradients(name: str, world_size: int) -> dict:
    """Loss, gradient vector (by parameter name, unsharded) and gradient norm of one step on this layout."""
    torch.manual_seed(0)
    model, inputs = get_family(name).example()
    even = len(inputs[0]) // 2 * 2  # families' examples may have odd batches: both layouts see the same rows
    inputs = tuple(t[:even] if isinstance(t, torch.Tensor) else t for t in inputs)
    family = family_of(model)
    engine = build_engine(model, ParallelConfig(dp_shard=world_size), plan=family.plan or data_parallel_only(name),
                          loss_fn=_loss, precision="fp32", activation_checkpointing=False,
                          batch_size=len(inputs[0]) // world_size)
    rows = slice(engine.dp_rank * len(inputs[0]) // world_size, (engine.dp_rank + 1) * len(inputs[0]) // world_size)
    local = tuple(t[rows] if isinstance(t, torch.Tensor) else t for t in inputs)
    loss = engine.mean_over_data_ranks(engine.forward_backward(local, None))
    grads = {n: _full(p.grad).detach().clone() for part in engine.parts for n, p in part.named_parameters()}
    norm = engine.clip_gradients(0.0)
    return {"loss": float(loss), "grads": grads, "norm": float(norm)}


def _all_families(rank, world_size):
    return {name: _gradients(name, world_size) for name in FAMILIES}


@pytest.fixture(scope="module")
def two_ranks():
    return spawn(_all_families, 2)[0]


@pytest.mark.parametrize("name", FAMILIES)
def test_two_data_ranks_equal_one_process(two_ranks, name):
    reference, result = _gradients(name, 1), two_ranks[name]
    assert result["grads"].keys() == reference["grads"].keys()
    vector = lambda grads: torch.cat([g.flatten().double() for g in grads.values()])  # noqa: E731
    expected = vector(reference["grads"])
    assert ((vector(result["grads"]) - expected).norm() / expected.norm()).item() < RTOL
    assert result["loss"] == pytest.approx(reference["loss"], rel=RTOL)
    assert result["norm"] == pytest.approx(reference["norm"], rel=RTOL)
