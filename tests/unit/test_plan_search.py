"""`orbit plan --search`: layouts ranked by predicted step, every one within memory, the memory
constraint binding, and the CLI's text and JSON."""
import dataclasses
import json
from pathlib import Path

import pytest

from orbit.cli import main
from orbit.models.registry import get_config
from orbit.perf.devices import frontier
from orbit.perf.plan import GIB
from orbit.perf.planner import candidates, search

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "pretrain"


@pytest.fixture(scope="module")
def one_b():
    return get_config("1b")


def test_candidates_cover_the_world_and_the_batch(one_b):
    system = frontier()
    for layout, local in candidates(one_b, system, 2, global_batch=32):
        assert layout.pp * layout.dp_replicate * layout.dp_shard * layout.sp * layout.tp == 16
        assert local * layout.dp_replicate * layout.dp_shard == 32
        assert layout.pp == 1 or layout.pp_microbatches % (layout.pp * layout.pp_stages_per_rank) == 0
        assert 8 % layout.tp == 0 and one_b.num_heads % (layout.tp * layout.sp) == 0


def test_ranked_fastest_first_and_all_fit(one_b):
    ranked = search(one_b, frontier(), 2, global_batch=32, precision="bf16", top=6)
    assert len(ranked) == 6
    steps = [r.step.step_s for r in ranked]
    assert steps == sorted(steps)
    assert all(r.plan.fits and r.plan.memory.total <= 64 * GIB * 0.85 for r in ranked)


def test_memory_constraint_binds(one_b):
    """On GCDs of 4 GiB the fastest unconstrained layout no longer fits: every survivor is within the
    smaller memory, and the ranking changes."""
    big = search(one_b, frontier(), 2, global_batch=32, precision="bf16", top=3)
    small_device = dataclasses.replace(frontier().device, memory_bytes=4 * GIB)
    small = search(one_b, dataclasses.replace(frontier(), device=small_device), 2, global_batch=32,
                   precision="bf16", top=3)
    assert small and all(r.plan.memory.total <= 4 * GIB * 0.85 for r in small)
    assert big[0].plan.memory.total > 4 * GIB * 0.85 and big[0].layout != small[0].layout
    tiny_device = dataclasses.replace(frontier().device, memory_bytes=GIB // 4)
    assert search(one_b, dataclasses.replace(frontier(), device=tiny_device), 2, global_batch=32,
                  precision="bf16") == []


def test_cli_search_text_and_json(capsys):
    config = str(CONFIGS / "115m-frontier.yaml")
    assert main(["plan", "--config", config, "--nodes", "1", "--search", "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "configured layout (fits)" in out and "fastest layouts that fit" in out and "parallel.tp=" in out
    assert main(["plan", "--config", config, "--nodes", "1", "--search", "--top", "2", "--json",
                 "--system", "dgx-h100"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["device"] == "H100 SXM" and data["global_batch"] == 128 and len(data["ranked"]) == 2
    first = data["ranked"][0]
    for key in ("step_s", "samples_per_s", "tflops_per_device", "mfu", "memory_gib_per_rank", "overrides"):
        assert key in first
    assert first["step_s"] <= data["ranked"][1]["step_s"]


def test_cli_search_rejects_unknown_system(capsys):
    with pytest.raises(SystemExit):
        main(["plan", "--config", str(CONFIGS / "115m-frontier.yaml"), "--nodes", "1", "--search",
              "--system", "summit"])
    assert "invalid choice: 'summit'" in capsys.readouterr().err
