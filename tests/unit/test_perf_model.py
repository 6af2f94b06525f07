"""The time model: α–β collectives by hand, device roofline, schedule terms, invariants of the step,
the CPU calibration's fit, and the time model on a benchmark case (no processes spawned)."""
import dataclasses
import math

import pytest

from orbit.models.registry import get_config
from orbit.perf.benchmark import case
from orbit.perf.calibrate import fit_affine, sent_per_rank
from orbit.perf.collectives import collective_time
from orbit.perf.devices import Link, Rate, System, cpu_system, frontier, get_system, mi250x_gcd
from orbit.perf.plan import Cluster, Layout, traffic_per_axis
from orbit.perf.plan import num_params
from orbit.perf.timemodel import axis_times, bubble_fraction, calls_per_step, fsdp_copy_time, predict
from orbit.perf.validate import compare, predict_case


def _fit(gemm=50e9, dtensor=100e-6, alpha=1e-4, beta=1e9) -> dict:
    """A CPU calibration with round numbers."""
    rate = {"c0_s": 0.0, "rate_flops": gemm}
    return {"gemm": {k: rate for k in ("forward", "input_grad", "weight_grad")},
            "sdpa": {"forward": {"c0_s": 0.0, "rate_flops": gemm / 2}, "forward_backward": {"c0_s": 0.0, "rate_flops": gemm / 3}},
            "elementwise": {k: {"c0_s": 0.0, "bytes_per_s": 10e9} for k in ("simple", "gelu", "norm")},
            "op_overhead_s": 5e-6, "dtensor_op_overhead_s": dtensor, "inplace_op_s": 3e-6,
            "dtensor_inplace_op_s": dtensor / 2,
            "collectives": {op: {"alpha_s": alpha, "beta_bytes_per_s": beta}
                            for op in ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv")}}


def _system(alpha=1e-5, beta=1e11, nic=25e9, nics=4, g=8) -> System:
    return dataclasses.replace(frontier(), gpus_per_node=g, intra=Link("intra", alpha, beta),
                               inter=Link("inter", 2 * alpha, nic), nics_per_node=nics)


# ------------------------------------------------------------------ collectives by hand


def test_ring_inside_a_node_by_hand():
    s = _system(alpha=1e-5, beta=1e11)
    size = 8e9
    assert collective_time("all_gather", size, 8, 1, s) == pytest.approx(7 * 1e-5 + 7 / 8 * size / 1e11)
    assert collective_time("all_reduce", size, 8, 1, s) == pytest.approx(14 * 1e-5 + 2 * 7 / 8 * size / 1e11)
    assert collective_time("send_recv", size, 2, 1, s) == pytest.approx(1e-5 + size / 1e11)
    assert collective_time("all_reduce", size, 1, 1, s) == 0.0


def test_hierarchical_across_nodes_by_hand():
    """16 ranks on 2 nodes, 8 per node (c = 1): the node receives half of S over its 4 NICs, then an
    intra-node ring; the flat ring at 12.5 GB/s per rank is slower."""
    s = _system(alpha=1e-5, beta=1e11, nic=25e9, nics=4)
    size = 1e9
    hier = (1 * 2e-5 + 0.5 * size / 100e9) + (7 * 1e-5 + 7 / 8 * size / 1e11)
    flat = 15 * 2e-5 + 15 / 16 * size / 12.5e9
    assert hier < flat
    assert collective_time("all_gather", size, 16, 2, s) == pytest.approx(hier)
    assert collective_time("all_reduce", size, 16, 2, s) == pytest.approx(2 * hier)


def test_one_rank_per_node_groups_share_the_nics():
    """tp = 8 leaves dp groups of one rank per node: 8 groups per node share 4 NICs (c = 8)."""
    s = _system(nic=25e9, nics=4)
    size, m = 1e9, 64
    expected = (m - 1) * 2e-5 + 8 * (1 - 1 / m) * size / 100e9
    assert collective_time("all_gather", size, m, m, s) == pytest.approx(min(expected, (m - 1) * 2e-5 + (m - 1) / m * size / 12.5e9))


def test_collective_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown collective 'gather'"):
        collective_time("gather", 1.0, 2, 1, _system())
    with pytest.raises(ValueError, match="n=2 ranks cannot span 3 nodes"):
        collective_time("all_reduce", 1.0, 2, 3, _system())


def test_sent_bytes_convention():
    assert sent_per_rank("all_reduce", 100, 2) == 100
    assert sent_per_rank("all_gather", 100, 4) == 75
    assert sent_per_rank("send_recv", 100, 2) == 100


# ------------------------------------------------------------------ devices and calibration


def test_gemm_roofline_and_rate():
    device = mi250x_gcd()
    rate = device.gemm["forward"].rate
    big = device.gemm_time("forward", 8192, 8192, 8192, 2)
    assert big == pytest.approx(5e-6 * 8 / 5 + 2 * 8192**3 / rate)  # launch 8 us
    thin = device.gemm_time("forward", 2**20, 8, 8, 2)  # K = N = 8: memory-bound
    assert thin == pytest.approx(8e-6 + 2 * (2**20 * 8 + 8 * 8 + 2**20 * 8) / 1.6e12)
    assert Rate(1e-3, 1e9).time(1e9) == pytest.approx(1.001) and Rate(1e-3, 1e9).time(0) == 0.0


def test_gemm_table_uses_the_nearest_measured_shape():
    fit = {**_fit(gemm=50e9), "gemm_table": {k: [[1024, 128, 128, 2 * 1024 * 128 * 128 / 40e9],
                                                [4096, 512, 512, 2 * 4096 * 512 * 512 / 90e9]]
                                            for k in ("forward", "input_grad", "weight_grad")}}
    device = cpu_system(fit, 1).device
    assert device.gemm_time("forward", 1000, 128, 120, 4) == pytest.approx(2 * 1000 * 128 * 120 / 40e9)
    assert device.gemm_time("weight_grad", 4096, 600, 512, 4) == pytest.approx(2 * 4096 * 600 * 512 / 90e9)


def test_fit_affine_recovers_a_line():
    xs = [1e3, 1e5, 1e7, 1e9]
    a, b = fit_affine(xs, [2e-4 + x / 5e9 for x in xs])
    assert a == pytest.approx(2e-4, rel=1e-6) and 1 / b == pytest.approx(5e9, rel=1e-6)
    a, b = fit_affine(xs, [x / 5e9 - 0 * 1e-9 for x in xs])
    assert a == 0.0 and 1 / b == pytest.approx(5e9, rel=1e-6)


def test_systems_and_precision():
    assert get_system("dgx-h100").device.peak_flops == 989e12
    assert get_system("frontier", "fp32").device.peak_flops == 47.9e12
    with pytest.raises(ValueError, match="unknown system 'summit'; valid"):
        get_system("summit")
    with pytest.raises(ValueError, match="precision 'fp8'"):
        get_system("frontier", "fp8")


def test_cpu_system_uses_concurrent_rates_for_two_ranks():
    fit = {**_fit(gemm=50e9), "concurrent": {k: v for k, v in _fit(gemm=25e9).items()
                                             if k in ("gemm", "sdpa", "elementwise", "op_overhead_s", "inplace_op_s")}}
    assert cpu_system(fit, 1).device.gemm["forward"].rate == 50e9
    assert cpu_system(fit, 2).device.gemm["forward"].rate == 25e9
    assert cpu_system(_fit(gemm=50e9), 2).device.gemm["forward"].rate == 50e9  # none measured: alone


def test_cpu_system_alpha_per_ring_step():
    s = cpu_system(_fit(alpha=2e-4))
    assert s.intra.alpha_beta("all_reduce") == (1e-4, 1e9)
    # a 2-rank all-reduce of S: 2 steps of α/2 + S / β: the measured α back
    assert collective_time("all_reduce", 1e6, 2, 1, s) == pytest.approx(2e-4 + 1e6 / 1e9)


# ------------------------------------------------------------------ schedule


def test_bubble_fractions():
    layout = Layout(pp=4, dp_replicate=1, dp_shard=1, sp=1, tp=1, pp_microbatches=8)
    assert bubble_fraction(layout) == pytest.approx(3 / 8)
    inter = dataclasses.replace(layout, pp_schedule="interleaved_1f1b", pp_stages_per_rank=2)
    assert bubble_fraction(inter) == pytest.approx(3 / 16)
    assert bubble_fraction(dataclasses.replace(layout, pp=1)) == 0.0


def test_calls_per_step():
    config = get_config("115m")
    layout = Layout(pp=1, dp_replicate=2, dp_shard=4, sp=1, tp=2)
    assert calls_per_step(config, layout, "dp_shard") == {"all_gather": 18, "reduce_scatter": 9}
    assert calls_per_step(config, layout, "dp_replicate") == {"all_reduce": 9}
    assert calls_per_step(config, layout, "tp") == {"all_reduce": 8 * 6 + 4 * 8 + 2}


def test_fsdp_over_the_sp_ranks_is_timed_apart_from_ulysses():
    """With dp_shard = 1 FSDP shards over the sp group, whose traffic `comm_stats` counts under one
    label "sp"; the time model splits it: FSDP's gathers and reduce-scatters ("sp_fsdp") beside
    Ulysses' all-to-alls ("sp"), the bytes adding up to the counted label's."""
    config = get_config("115m")
    layout = Layout(pp=1, dp_replicate=1, dp_shard=1, sp=2, tp=1)
    cluster = Cluster(nodes=1, gpus_per_node=2)
    counted = {t.label: t.bytes_per_step for t in traffic_per_axis(config, layout, cluster, batch_size=2, precision="fp32")}
    split = {t.label: t.bytes_per_step for t in traffic_per_axis(config, layout, cluster, batch_size=2, precision="fp32",
                                                                  fsdp_apart_from_sp=True)}
    assert set(counted) == {"sp"} and set(split) == {"sp", "sp_fsdp"}
    assert split["sp"] + split["sp_fsdp"] == pytest.approx(counted["sp"])
    fsdp_alone = traffic_per_axis(config, dataclasses.replace(layout, sp=1, dp_shard=2), cluster, batch_size=2,
                                  precision="fp32")
    assert split["sp_fsdp"] == pytest.approx(fsdp_alone[0].bytes_per_step)
    comm = axis_times(config, layout, _system(g=2), 1, batch_size=2, precision="fp32")
    assert set(comm["sp_fsdp"]) == {"all_gather", "reduce_scatter"} and set(comm["sp"]) == {"all_to_all"}


def test_fsdp_copies_by_hand():
    """Two gathers (copy in and out, 2 bytes each under bf16) and a reduce-scatter (fp32 in and out)
    of every parameter: 2 (2 x 2 + 4) = 16 bytes per parameter; nothing without FSDP."""
    config, device = get_config("115m"), mi250x_gcd()
    layout = Layout(pp=1, dp_replicate=1, dp_shard=8, sp=1, tp=1)
    simple = device.elementwise["simple"]
    assert fsdp_copy_time(config, layout, device, 2) == pytest.approx(simple.c0_s + 16 * num_params(config) / simple.rate)
    assert fsdp_copy_time(config, dataclasses.replace(layout, dp_shard=1, dp_replicate=8), device, 2) == 0.0


@pytest.fixture(scope="module")
def ten_b():
    return get_config("10b")


def test_step_invariants(ten_b):
    system = frontier()
    layout = Layout(pp=1, dp_replicate=1, dp_shard=64, sp=1, tp=8)
    step = predict(ten_b, layout, system, 64, batch_size=2, precision="bf16")
    assert step.step_s == pytest.approx(sum(step.breakdown().values()))
    assert step.mfu == pytest.approx(step.tflops_per_device * 1e12 / 191.5e12)
    assert step.pflops == pytest.approx(step.tflops_per_device * 512 / 1e3)
    assert step.samples_per_s == pytest.approx(128 / step.step_s)
    assert 0 < step.mfu < 1
    # tensor-parallel all-reduces are exposed in full; FSDP's hide under compute up to its edges
    assert step.exposed_s["tp"] == pytest.approx(step.comm_s["tp"])
    assert step.exposed_s["dp_shard"] < step.comm_s["dp_shard"]
    # checkpointing recomputes each block's forward: more time, same model FLOPs
    ac = predict(ten_b, dataclasses.replace(layout, activation_checkpointing=True), system, 64, batch_size=2,
                 precision="bf16")
    assert ac.recompute_s > 0 and ac.step_s > step.step_s and ac.model_flops == step.model_flops


def test_faster_gemms_shorten_only_compute(ten_b):
    system = frontier()
    layout = Layout(pp=1, dp_replicate=1, dp_shard=64, sp=1, tp=8)
    base = predict(ten_b, layout, system, 64, batch_size=2, precision="bf16")
    doubled = {k: Rate(r.c0_s, 2 * r.rate) for k, r in system.device.gemm.items()}
    faster = predict(ten_b, layout, dataclasses.replace(system, device=dataclasses.replace(system.device, gemm=doubled)),
                     64, batch_size=2, precision="bf16")
    assert faster.compute_s < base.compute_s and faster.comm_s == base.comm_s


def test_without_overlap_everything_is_exposed(ten_b):
    system = frontier()
    serial = dataclasses.replace(system, device=dataclasses.replace(system.device, overlap_comm=False))
    layout = Layout(pp=1, dp_replicate=1, dp_shard=64, sp=1, tp=8)
    step = predict(ten_b, layout, serial, 64, batch_size=2, precision="bf16")
    assert step.exposed_s["dp_shard"] == pytest.approx(step.comm_s["dp_shard"])


def test_profile_precision_must_match(ten_b):
    layout = Layout(pp=1, dp_replicate=1, dp_shard=8, sp=1, tp=1)
    with pytest.raises(ValueError, match="profile is for bf16, the run uses fp32"):
        predict(ten_b, layout, frontier(), 1, batch_size=1, precision="fp32")


# ------------------------------------------------------------------ CPU validation path


def test_benchmark_case_prediction_by_hand_compute():
    """One process: no communication, the step is compute + optimizer; doubling the GEMM rate
    shortens it; a 2-rank tp case pays DTensor dispatch and tp all-reduces."""
    one = predict_case(case("d128", 1, 8), _fit())
    assert set(k for k, v in one.breakdown().items() if v) == {"compute", "optimizer"}
    faster = predict_case(case("d128", 1, 8), _fit(gemm=100e9))
    assert faster.step_s < one.step_s
    tp = predict_case(case("d128", 2, 8, dp_shard=1, tp=2), _fit())
    assert tp.exposed_s["tp"] > 0 and tp.compute_s > one.compute_s / 2


def test_compare_rows_error_and_judgement():
    from orbit.perf.benchmark import Result
    c = case("d128", 2, 8, dp_shard=2)
    step = predict_case(c, _fit())
    result = Result(c, step_s=2 * step.step_s, step_min_s=step.step_s * 1.1, cpu_s_per_rank=0.1, samples_per_s=1,
                    tokens_per_s=1, tflops_per_rank=1, mfu=0.1, peak_memory_mib=1, state_mib_per_rank=1,
                    ideal_state_mib_per_rank=1)
    row, = compare([result], _fit())
    assert row["error"] == pytest.approx(1 / 1.1 - 1) and row["judged"] is (2 <= (__import__("os").cpu_count() or 1))
    assert math.isclose(row["predicted"]["step_s"], step.step_s)


def test_measured_fsdp_unit_cost_replaces_the_collectives_latency():
    """A CPU fit with FSDP's per-unit cost: a dp_shard axis costs units x that (4 blocks + the root)
    plus the bandwidth terms only (α dropped); replicate likewise; without it, α-β alone."""
    c = case("d128", 2, 8, dp_shard=2)
    alpha, beta = 1e-4, 1e9
    plain = predict_case(c, _fit(alpha=alpha, beta=beta))
    with_units = predict_case(c, {**_fit(alpha=alpha, beta=beta), "fsdp_unit_s": {"shard": 4e-3, "replicate": 2e-3}})
    units, gathers, scatters = 5, 10, 5
    latency = gathers * alpha + scatters * alpha  # 2 ranks: one ring step each
    assert with_units.comm_s["dp_shard"] == pytest.approx(plain.comm_s["dp_shard"] - latency + units * 4e-3)
    rep = case("d128", 2, 8, dp_replicate=2, dp_shard=1)
    plain_rep = predict_case(rep, _fit(alpha=alpha, beta=beta))
    units_rep = predict_case(rep, {**_fit(alpha=alpha, beta=beta), "fsdp_unit_s": {"shard": 4e-3, "replicate": 2e-3}})
    assert units_rep.comm_s["dp_replicate"] == pytest.approx(plain_rep.comm_s["dp_replicate"] - units * alpha + units * 2e-3)
