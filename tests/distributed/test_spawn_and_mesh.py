"""The spawn harness and the named mesh: degrees, validation, derived meshes."""
import pytest
import torch
import torch.distributed as dist

from orbit.parallel.mesh import ParallelDims
from orbit.parallel.spawn import RankFailed, spawn


def _mesh_report(rank, world_size, degrees):
    dims = ParallelDims(world_size=world_size, **degrees)
    mesh = dims.build_mesh("cpu")
    value = torch.tensor([float(rank)])
    dist.all_reduce(value, group=mesh["tp"].get_group())
    return {
        "coords": {axis: mesh[axis].get_local_rank() for axis in ("pp", "dp_replicate", "dp_shard", "sp", "tp")},
        "dp": mesh["dp"].size(), "loss": mesh["loss"].size(), "dp_shard_sp": mesh["dp_shard_sp"].size(),
        "tp_sum": value.item(),
    }


def test_mesh_puts_tp_innermost_and_pp_outermost():
    reports = spawn(_mesh_report, 8, {"pp": 2, "dp_shard": 2, "tp": 2})
    assert [r["coords"]["tp"] for r in reports] == [0, 1] * 4
    assert [r["coords"]["pp"] for r in reports] == [0] * 4 + [1] * 4
    assert [r["tp_sum"] for r in reports] == [1, 1, 5, 5, 9, 9, 13, 13]  # tp pairs are adjacent ranks
    assert {(r["dp"], r["loss"], r["dp_shard_sp"]) for r in reports} == {(2, 2, 2)}


def _fail_on_rank_one(rank, world_size):
    if rank == 1:
        raise ValueError("boom on purpose")
    return rank


def test_spawn_names_the_failing_rank():
    with pytest.raises(RankFailed, match=r"rank 1 failed:[\s\S]*boom on purpose"):
        spawn(_fail_on_rank_one, 2)


@pytest.mark.parametrize("degrees, message", [
    ({"tp": 3}, "multiply to 3"),
    ({"tp": 2, "dp_shard": -1, "sp": -1}, "only one"),
    ({"tp": 0}, ">= 1 or -1"),
    ({"tp": 3, "dp_shard": -1}, "not divisible"),
])
def test_invalid_degrees_are_rejected(degrees, message):
    with pytest.raises(ValueError, match=message):
        ParallelDims(world_size=4, **{"dp_shard": 1, **degrees})


def test_minus_one_takes_the_rest():
    dims = ParallelDims(world_size=16, pp=2, tp=2, sp=2)
    assert dims.dp_shard == 2 and dims.dp == 2
