"""`orbit plan`: hand-computed memory of a tiny layout, placement, invalid layouts and their
suggestions, the shipped Frontier configs, memory parsing and the CLI's exit codes."""
import re
from pathlib import Path

import pytest

from orbit.cli import main
from orbit.config import load_config
from orbit.models.registry import get_config
from orbit.perf.comm_model import expected_sent_bytes
from orbit.perf.plan import (GIB, Cluster, Layout, block_activation_bytes, format_plan, front_activation_bytes,
                                 head_activation_bytes, memory_per_rank, nodes_per_group, parse_memory, plan,
                                 traffic_per_axis, unit_elements)

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "pretrain"
FRONTIER = sorted(CONFIGS.glob("*-frontier.yaml"))


@pytest.fixture(scope="module")
def small():
    """D=8, MLP 32, 2 heads, no QK-norm, 2 variables, 8x8 grid, patch 2 (L=16), lead features 4."""
    return get_config("tiny", variables=("a", "b"), img_size=(8, 8), patch_size=2, embed_dim=8, depth=2,
                      num_heads=2, qk_norm=False, lead_time_freq_dim=4)


# ------------------------------------------------------------------ parameters and optimizer


def test_unit_elements_by_hand(small):
    # block 12 D^2 + 13 D = 872; tp=2 local: norms 32, q/k/v 3 x (32 + 4), proj 32 + 8, fc1 128 + 16, fc2 128 + 8
    assert unit_elements(small, 1, 1)["block"] == (872, 872)
    # dp_shard*sp=4 divides every dim 0: 460 / 4
    assert unit_elements(small, 2, 4)["block"] == (460, 115)
    # 3 shards pad dim 0 (ceil): norms 4 x 3, q/k/v 3 x (2*8 + 2), proj 3*4 + 3, fc1 6*8 + 6, fc2 3*16 + 3
    assert unit_elements(small, 2, 3)["block"] == (460, 186)
    # front: patch embed 64+16, var embed 16, aggregation (query 4, k/v 2 x 36, proj 32 + 8), lead 40 + 72
    # 4 shards: patch weight (2, 8, 2, 2) pads to 1 x 32, bias 8, var 8, query 1, k/v 9+9, proj 10, lead 10 + 18
    assert unit_elements(small, 2, 4)["front"] == (324, 105)
    # head: norm 16, linear 8 -> 2*2*2 outputs 72; 4 shards: 2 + 2 + 2*8 + 2
    assert unit_elements(small, 2, 4)["head"] == (88, 22)


def test_memory_of_dp_shard4_tp2_pp2_by_hand(small):
    layout = Layout(pp=2, dp_replicate=1, dp_shard=4, sp=1, tp=2, pp_microbatches=2)
    memory = memory_per_rank(small, layout, batch_size=2, precision="bf16")
    # pp rank 0 holds block 0 + front end (115 + 105 stored elements), rank 1 block 1 + head (115 + 22)
    assert memory.pp_rank == 0
    assert memory.params == 4 * 220 and memory.grads == 4 * 220
    assert memory.optimizer == 8 * 220  # AdamW's two fp32 moments
    # largest unit on rank 0, the block's 460 tp-local elements: 2 bf16 gathers + bf16 grad + fp32 reduce copy
    assert memory.working == 460 * (2 * 2 + 2 + 4)
    # 1F1B: rank 0 keeps min(M=2, pp - 0) = 2 microbatches of 1 sample
    per_microbatch = (block_activation_bytes(small, 1, tp=2, sp=1, elem_bytes=2)
                      + front_activation_bytes(small, 1, tp=2, elem_bytes=2))
    assert memory.activations == pytest.approx(2 * per_microbatch)


def test_no_fsdp_under_bf16_keeps_autocast_copies(small):
    layout = Layout(pp=1, dp_replicate=1, dp_shard=1, sp=1, tp=2)
    memory = memory_per_rank(small, layout, batch_size=1, precision="bf16")
    local = 324 + 2 * 460 + 88
    assert (memory.params, memory.optimizer, memory.working) == (4 * local, 8 * local, 2 * local)


# ------------------------------------------------------------------ activations


def test_block_activations_by_hand(small):
    # e b L D (4 + (5 + 2r)/t) + 4 b a L / t with e=2, b=2, L=16, D=8, r=4, t=2, a=2
    assert block_activation_bytes(small, 2, tp=2, sp=1, elem_bytes=2) == 2 * 2 * 16 * 8 * 10.5 + 4 * 2 * 2 * 16 / 2
    # Ulysses keeps a band of L/sp tokens of everything
    assert block_activation_bytes(small, 2, tp=1, sp=2, elem_bytes=2) == \
        pytest.approx(block_activation_bytes(small, 2, tp=1, sp=1, elem_bytes=2) / 2)
    # the math attention path keeps the softmax e b a L^2 / t instead of the log-sum-exp
    assert block_activation_bytes(small, 2, tp=2, sp=1, elem_bytes=2, flash_attention=False) == \
        2 * 2 * 16 * 8 * 10.5 + 2 * 2 * 2 * 16 * 16 / 2


def test_checkpointing_keeps_block_inputs_plus_one_block(small):
    base = Layout(pp=1, dp_replicate=1, dp_shard=4, sp=1, tp=1)
    off = memory_per_rank(small, base, batch_size=4, precision="fp32")
    on = memory_per_rank(small, Layout(**{**base.__dict__, "activation_checkpointing": True}), batch_size=4,
                         precision="fp32")
    block = block_activation_bytes(small, 4, tp=1, sp=1, elem_bytes=4)
    ends = front_activation_bytes(small, 4, tp=1, elem_bytes=4) + head_activation_bytes(small, 4, elem_bytes=4)
    assert off.activations == pytest.approx(2 * block + ends)
    assert on.activations == pytest.approx(2 * 4 * 4 * 16 * 8 + block + ends)
    # ORBIT block (QK-norm, r=4): checkpointing keeps 1 of 4 + 15/t elements per token and width
    c = get_config("1b")
    ratio = block_activation_bytes(c, 1, tp=2, sp=1, elem_bytes=2) / (2 * c.num_tokens * c.embed_dim)
    assert ratio == pytest.approx(4 + 15 / 2, rel=1e-3)


# ------------------------------------------------------------------ placement and traffic


def test_nodes_per_group():
    assert nodes_per_group(1, 8, 8) == (1, 1)    # tp=8 fills a node
    assert nodes_per_group(8, 4, 8) == (4, 4)    # dp groups of tp=8 layouts: one rank per node
    assert nodes_per_group(2, 8, 8) == (2, 2)    # stride 2 x 8 ranks span 2 nodes
    assert nodes_per_group(1, 6, 8) == (1, 2)    # groups of 6 consecutive ranks sometimes straddle nodes


def test_traffic_reuses_comm_model_and_places_axes():
    config = get_config("1b")
    cluster = Cluster(nodes=2, gpus_per_node=8)
    layout = Layout(pp=1, dp_replicate=1, dp_shard=4, sp=1, tp=4)
    traffic = {t.label: t for t in traffic_per_axis(config, layout, cluster, batch_size=2, precision="fp32")}
    expected = expected_sent_bytes(config, layout.dims(16), local_batch=2)
    assert {label: t.bytes_per_step for label, t in traffic.items()} == expected
    assert traffic["tp"].intra_node and traffic["tp"].nodes_per_group == (1, 1)
    assert not traffic["dp_shard"].intra_node and traffic["dp_shard"].nodes_per_group == (2, 2)


# ------------------------------------------------------------------ invalid layouts and suggestions


def _assert_suggestions_fit(result, cfg_path):
    assert result.suggestions
    for suggestion in result.suggestions:
        again = plan(load_config(cfg_path, suggestion.layout.overrides().split()), result.cluster)
        assert again.valid and again.fits, format_plan(again)
        assert again.memory.total == pytest.approx(suggestion.memory.total)
    costs = [s.cost for s in result.suggestions]
    assert costs == sorted(costs)


def test_invalid_heads_warns_and_suggests_layouts_that_fit():
    path = CONFIGS / "1b-frontier.yaml"
    result = plan(load_config(path, ["parallel.tp=4", "parallel.sp=8"]), Cluster(nodes=8))
    assert not result.valid and not result.fits
    assert any("num_heads=16" in p and "tp*sp=32" in p for p in result.problems)
    text = format_plan(result)
    assert "WARNING: invalid layout" in text and "parallel.tp=" in text
    _assert_suggestions_fit(result, path)


def test_degrees_not_covering_the_world_are_reported():
    result = plan(load_config(CONFIGS / "115m-frontier.yaml", ["parallel.dp_shard=3"]), Cluster(nodes=1))
    assert result.layout is None and "world size is 8" in result.problems[0]
    _assert_suggestions_fit(result, CONFIGS / "115m-frontier.yaml")


def test_too_large_for_the_nodes_says_so():
    result = plan(load_config(CONFIGS / "113b-frontier.yaml"), Cluster(nodes=1))
    assert result.valid and not result.fits and not result.suggestions
    text = format_plan(result)
    assert "WARNING: does not fit" in text and "no layout of 8 ranks fits" in text


# ------------------------------------------------------------------ shipped configs


def _documented_nodes(path: Path) -> int:
    match = re.search(r"orbit plan --config \S+ --nodes (\d+)", path.read_text())
    assert match, f"{path.name} must document its `orbit plan` command line"
    return int(match.group(1))


def test_all_four_frontier_configs_are_shipped():
    assert [p.name for p in FRONTIER] == [f"{n}-frontier.yaml" for n in ("10b", "113b", "115m", "1b")]


@pytest.mark.parametrize("path", FRONTIER, ids=lambda p: p.stem)
def test_frontier_config_fits_at_its_documented_node_count(path):
    cfg = load_config(path)
    result = plan(cfg, Cluster(nodes=_documented_nodes(path), gpus_per_node=8, gpu_memory_bytes=64 * GIB))
    assert result.valid and result.fits, format_plan(result)
    assert cfg.train.precision == "bf16" and cfg.data.root.startswith("/lustre/orion/<project>/")


def test_113b_keeps_tensor_parallel_inside_a_node():
    result = plan(load_config(CONFIGS / "113b-frontier.yaml"), Cluster(nodes=6144))
    links = {t.label: t.intra_node for t in result.traffic}
    assert links == {"tp": True, "dp_shard": False}
    assert "node 0 holds ranks 0-7: pp 0, dp_replicate 0, dp_shard 0, sp 0, tp 0-7" in format_plan(result)


# ------------------------------------------------------------------ memory parsing and the CLI


@pytest.mark.parametrize("text, expected", [("64GiB", 64 * 2**30), ("80GB", 80 * 10**9), ("512 MiB", 2**29),
                                            ("1.5TiB", int(1.5 * 2**40)), ("4096", 4096)])
def test_parse_memory(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["64XB", "GiB", "", "-1GiB", "0GB", "64 Gib s"])
def test_parse_memory_rejects(text):
    with pytest.raises(ValueError, match="e.g. 64GiB"):
        parse_memory(text)


def test_cli_exit_codes(capsys):
    config = str(CONFIGS / "115m-frontier.yaml")
    assert main(["plan", "--config", config, "--nodes", "1", "--gpu-memory", "64GiB"]) == 0
    assert "OK: fits" in capsys.readouterr().out
    assert main(["plan", "--config", config, "--nodes", "1", "--gpu-memory", "1GiB"]) == 1
    out = capsys.readouterr().out
    assert "WARNING: does not fit" in out and "valid layouts that fit" in out
    assert main(["plan", "--config", config, "--nodes", "1", "--gpu-memory", "lots"]) == 2
    assert "GPU memory 'lots'" in capsys.readouterr().err
