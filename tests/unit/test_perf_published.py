"""Published ORBIT configurations as laid out here, their comparison table, and the scaling curves."""
import dataclasses

import pytest

from orbit.models.registry import get_config
from orbit.perf.devices import frontier
from orbit.perf.plan import Cluster, evaluate
from orbit.perf.published import ORBIT, compare, node_counts, orbit_layout, published_table
from orbit.perf.scaling import plot, strong_curve, weak_curve


def test_orbit_layout_of_113b_fits_and_keeps_tp_in_a_node():
    config, system = get_config("113b"), frontier()
    layout = orbit_layout(config, system, 6144)
    assert layout.tp == 8 and layout.activation_checkpointing
    assert layout.tp * layout.dp_shard * layout.dp_replicate == 6144 * 8
    plan = evaluate(config, layout, Cluster(6144, 8, system.device.memory_bytes), batch_size=2, precision="bf16")
    assert plan.fits
    # the smallest FSDP group that fits: half of it would not
    smaller = dataclasses.replace(layout, dp_shard=layout.dp_shard // 2, dp_replicate=layout.dp_replicate * 2)
    assert not evaluate(config, smaller, Cluster(6144, 8, system.device.memory_bytes), batch_size=2,
                        precision="bf16").fits


def test_orbit_layout_that_cannot_fit_says_so():
    with pytest.raises(ValueError, match="113b does not fit on 1 nodes of frontier"):
        orbit_layout(get_config("113b"), frontier(), 1)


def test_comparison_row_for_115m():
    row = compare(ORBIT, "115m", frontier())
    assert row.nodes == 6144 and row.orbit.plan.fits and row.best.plan.fits
    assert row.best.step.step_s <= row.orbit.step.step_s  # the planner's layout is no slower
    assert 0 < row.weak_efficiency <= 1.05 and row.base_nodes == 1
    table = published_table([row])
    assert "684–1,600" in table[2] and "ORBIT (SC24)" in table[2]


def test_scaling_curves_and_plot(tmp_path):
    system = frontier()
    weak = weak_curve("115m", system, [1, 2, 4])
    assert weak.nodes == [1, 2, 4] and weak.efficiency()[0] == 1.0
    assert weak.pflops == sorted(weak.pflops)
    strong = strong_curve("115m", system, [1, 2], global_batch=64)
    assert strong.nodes == [1, 2] and strong.samples_per_s[1] > strong.samples_per_s[0]
    plot([weak, strong], tmp_path / "s.png", gpus_per_node=8, global_batch=64)
    assert (tmp_path / "s.png").stat().st_size > 10_000
    assert node_counts(6) == [1, 2, 4, 6] and node_counts(8) == [1, 2, 4, 8]
