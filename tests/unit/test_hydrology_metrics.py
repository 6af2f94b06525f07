"""orbit/metrics/hydrology.py against hand-computed values of the formulas in its docstring."""
import numpy as np
import pytest

from orbit.metrics import hydrology as h

OBS = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 4.0, 3.0, 2.0])


def test_nse_perfect_mean_and_hand_value():
    assert h.nse(OBS, OBS) == 1.0
    assert h.nse(np.full_like(OBS, OBS.mean()), OBS) == pytest.approx(0.0)
    sim = OBS + 1.0  # sum of squared errors 8, sum of squared anomalies 14
    assert h.nse(sim, OBS) == pytest.approx(1 - 8 / ((OBS - OBS.mean()) ** 2).sum())


def test_kge_components_of_a_scaled_series():
    c = h.kge_components(2 * OBS, OBS)
    assert c["r"] == pytest.approx(1.0) and c["alpha"] == pytest.approx(2.0) and c["beta"] == pytest.approx(2.0)
    assert c["kge"] == pytest.approx(1 - np.sqrt(2.0))
    assert h.kge(OBS, OBS) == pytest.approx(1.0)


def test_alpha_and_beta_nse():
    assert h.alpha_nse(3 * OBS, OBS) == pytest.approx(3.0)
    assert h.beta_nse(OBS + OBS.std(), OBS) == pytest.approx(1.0)


def test_missing_observations_are_left_out():
    obs = np.concatenate([OBS, [np.nan, np.nan]])
    sim = np.concatenate([OBS + 1.0, [100.0, -5.0]])
    assert h.nse(sim, obs) == pytest.approx(h.nse(OBS + 1.0, OBS))
    assert np.isnan(h.nse([1.0, np.nan], [np.nan, 2.0]))


def test_flow_duration_curve_biases():
    rng = np.random.default_rng(0)
    obs = rng.gamma(1.0, 2.0, 1000) + 0.1
    assert h.fhv(1.1 * obs, obs) == pytest.approx(10.0)
    assert h.flv(obs, obs) == pytest.approx(0.0)
    # a uniform factor leaves the log-spread of the low flows unchanged; a compressed low end is a bias
    assert h.flv(2 * obs, obs) == pytest.approx(0.0, abs=1e-9)
    assert h.flv(np.sqrt(obs), obs) > 0


def test_peak_timing_counts_days_of_offset():
    t = np.arange(600)
    obs = np.exp(-0.5 * ((t[:, None] - np.array([100, 250, 400, 550])) / 3.0) ** 2).sum(1)
    assert h.peak_timing(obs, obs) == 0.0
    assert h.peak_timing(np.roll(obs, 2), obs) == pytest.approx(2.0)


def test_unequal_lengths_are_refused():
    with pytest.raises(ValueError, match="differ in length"):
        h.nse([1.0, 2.0], [1.0, 2.0, 3.0])
