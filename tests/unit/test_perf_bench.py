"""`orbit bench --predict` end to end on the smallest sweep (one process, a given calibration), and
the calibration's fit of raw micro-measurements."""
import json

from orbit.cli import main
from orbit.perf.calibrate import fit


def _fit() -> dict:
    """A CPU calibration with round numbers (as test_perf_model's)."""
    rate = {"c0_s": 0.0, "rate_flops": 50e9}
    return {"gemm": {k: rate for k in ("forward", "input_grad", "weight_grad")},
            "sdpa": {k: {"c0_s": 0.0, "rate_flops": 20e9} for k in ("forward", "forward_backward")},
            "elementwise": {k: {"c0_s": 0.0, "bytes_per_s": 10e9} for k in ("simple", "gelu", "norm")},
            "op_overhead_s": 5e-6, "dtensor_op_overhead_s": 1e-4, "inplace_op_s": 3e-6, "dtensor_inplace_op_s": 5e-5,
            "collectives": {op: {"alpha_s": 1e-4, "beta_bytes_per_s": 1e9}
                            for op in ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv")}}


def test_bench_predict_writes_prediction_beside_measurement(tmp_path, capsys):
    calibration = tmp_path / "cpu.json"
    calibration.write_text(json.dumps({"fit": _fit()}))
    out = tmp_path / "bench"
    assert main(["bench", "--sizes", "d128", "--world-sizes", "1", "--steps", "1", "--predict",
                 "--calibration", str(calibration), "--out", str(out)]) == 0
    data = json.loads((tmp_path / "bench.json").read_text())
    row, = data["predicted"]
    assert row["layout"] == "1 process" and row["judged"]
    assert row["predicted"]["step_s"] > 0 and row["error"] == row["predicted"]["step_s"] / row["measured_s"] - 1
    assert data["cpu_fit"]["op_overhead_s"] == 5e-6
    text = (tmp_path / "bench.md").read_text()
    assert "## Predicted beside measured" in text and "| d128 | 1 | 1 process |" in text


def test_fit_of_raw_measurements():
    line = lambda c0, rate, xs: [c0 + x / rate for x in xs]  # noqa: E731
    shapes = [(256, 64, 64), (1024, 256, 256), (4096, 512, 512)]
    flops = [2 * m * k * n for m, k, n in shapes]
    gemm = [[m, k, n, t] for (m, k, n), t in zip(shapes, line(1e-5, 80e9, flops))]
    sdpa = [[8, 128, 32], [64, 512, 64]]
    f = [4 * bh * L * L * d for bh, L, d in sdpa]
    sent = [1e3, 1e6, 1e7]
    raw = {"gemm": {k: gemm for k in ("forward", "input_grad", "weight_grad")},
           "sdpa": {"forward": [[*s, t] for s, t in zip(sdpa, line(0, 40e9, f))],
                    "forward_backward": [[*s, t] for s, t in zip(sdpa, line(0, 30e9, [3 * x for x in f]))]},
           "elementwise": {k: [[b, t] for b, t in zip(sent, line(1e-6, 10e9, sent))] for k in ("simple", "gelu", "norm")},
           "op_overhead_s": 5e-6, "dtensor_op_overhead_s": 1e-4, "inplace_op_s": 3e-6, "dtensor_inplace_op_s": 5e-5,
           "collectives": {"all_reduce": [[s, t] for s, t in zip(sent, line(3e-4, 6e8, sent))]}}
    result = fit(raw)
    assert abs(result["gemm"]["forward"]["rate_flops"] / 80e9 - 1) < 1e-6
    assert abs(result["gemm"]["forward"]["c0_s"] / 1e-5 - 1) < 1e-6
    assert abs(result["sdpa"]["forward_backward"]["rate_flops"] / 30e9 - 1) < 1e-6
    assert abs(result["collectives"]["all_reduce"]["alpha_s"] / 3e-4 - 1) < 1e-6
    assert abs(result["elementwise"]["gelu"]["bytes_per_s"] / 10e9 - 1) < 1e-6
    assert "fsdp_unit_s" not in result  # older calibrations: the time model keeps α-β alone
    assert fit({**raw, "fsdp_unit_s": {"shard": 4e-3, "replicate": 2e-3}})["fsdp_unit_s"]["shard"] == 4e-3


def test_fsdp_unit_cost_is_measured_on_two_ranks():
    """The calibration's FSDP micro-measurement runs (2 gloo ranks, tiny units) and is positive:
    a sharded stack costs more than the same stack unwrapped."""
    from orbit.parallel.spawn import spawn
    per_rank = spawn(_fsdp_unit_on_rank, 2)
    for result in per_rank:
        assert set(result) == {"shard", "replicate"} and result["shard"] > 0 and result["replicate"] > 0


def _fsdp_unit_on_rank(rank: int, world_size: int) -> dict:
    from orbit.perf.calibrate import _fsdp_unit_overhead
    return _fsdp_unit_overhead(repeats=1, units=2)
