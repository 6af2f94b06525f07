"""The process-based baseline (orbit/plugins/streamflow/conceptual.py): the refactored conceptual model
reproduces the generator, calibration finds a noise-free basin's flow (known answer), the objectives
match the metrics module, ungauged basins take the nearest training basin's parameters, the baseline
appears in a CLI run's summary and report, and bad settings are named before work starts."""
import json
import re
from pathlib import Path

import numpy as np
import pytest

from orbit.cli import main
from orbit.metrics.hydrology import kge, nse
from orbit.plugins.streamflow.conceptual import calibrate, conceptual_baseline, kge_many, nearest_donors, nse_many
from orbit.plugins.streamflow.synthetic import (attribute_parameters, draw_static, model_forcing, runoff, simulate,
                                                synthetic_basins, weather)

TINY = str(Path(__file__).resolve().parents[2] / "configs/plugins/streamflow/tiny.yaml")
QUICK = ["train.max_steps=4", "train.log_every=2", "train.ckpt_every=4", "train.warmup_steps=1", "data.n_basins=6",
         "data.seq_len=15", "eval.conceptual_baseline=true", "eval.conceptual_generations=3",
         "eval.conceptual_popsize=3"]


def test_the_refactored_model_reproduces_the_generator_of_before_the_refactor():
    data = synthetic_basins(20, 1990, 1995, seed=3)
    # sums and values of synthetic_basins(20, 1990, 1995, seed=3) computed by `runoff` before it was
    # split into attribute_parameters + model_forcing + simulate (commit c5bac2d)
    assert data.flow[:3].sum() == pytest.approx(7825.735806255379, rel=1e-12)
    assert data.flow[0, 400] == pytest.approx(2.1438281023032713, rel=1e-12)
    assert data.flow[2, 1000] == pytest.approx(0.11749540141073186, rel=1e-12)
    assert data.truth["melt"][:3].sum() == pytest.approx(1251.0862966534012, rel=1e-12)
    assert data.truth["soil"][:3].sum() == pytest.approx(4644.362106143617, rel=1e-12)


def test_a_population_sharing_one_forcing_equals_one_run_per_parameter_set():
    rng = np.random.default_rng(1)
    static = draw_static(4, rng)
    drivers = weather(static[:1], np.arange(np.datetime64("1990-01-01"), np.datetime64("1991-01-01")), 0.0, rng)
    params = attribute_parameters(static)
    together = simulate(params, *model_forcing(drivers))["flow"]
    for i in range(4):
        alone = simulate({k: v[i:i + 1] for k, v in params.items()}, *model_forcing(drivers))["flow"][0]
        np.testing.assert_allclose(together[i], alone, rtol=1e-12)


def test_vectorised_objectives_equal_the_metrics_module():
    rng = np.random.default_rng(2)
    obs, sims = rng.gamma(2.0, 1.0, 300), rng.gamma(2.0, 1.0, (3, 300))
    np.testing.assert_allclose(nse_many(sims, obs), [nse(s, obs) for s in sims], rtol=1e-10)
    np.testing.assert_allclose(kge_many(sims, obs), [kge(s, obs) for s in sims], rtol=1e-10)


def test_calibration_finds_a_noise_free_basin_and_holds_on_unseen_years():
    rng = np.random.default_rng(1)
    static = draw_static(1, rng)
    dates = np.arange(np.datetime64("1990-01-01"), np.datetime64("1994-01-01"), dtype="datetime64[D]")
    drivers = weather(static, dates, 0.0, rng)
    flow = runoff(static, drivers)["flow"][0]  # the model's own output, no noise: the known answer is NSE 1
    forcing = model_forcing(drivers)
    cut = 3 * 365
    scored = np.arange(cut) >= 365  # year 1 is spin-up, years 2-3 calibrate, year 4 is never seen
    fit = calibrate(tuple(f[:, :cut] for f in forcing), flow[:cut], scored, "nse", generations=30, popsize=10, seed=0)
    sim = simulate({k: np.array([v]) for k, v in fit.params.items()}, *forcing)["flow"][0]
    assert fit.score > 0.98 and fit.score == pytest.approx(nse(sim[365:cut], flow[365:cut]), rel=1e-9)
    assert nse(sim[cut:], flow[cut:]) > 0.98
    truth = attribute_parameters(static)
    assert abs(fit.params["maxbas"] - truth["maxbas"][0]) < 0.5  # the routing delay is well identified
    assert fit.runs == 31 * 10 * 9  # (generations + 1) x popsize x 9 parameters


def test_ungauged_basins_take_the_parameters_of_the_nearest_training_basin():
    static = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [9.0, 1.0], [1.0, 8.0]])
    np.testing.assert_array_equal(nearest_donors(static, np.array([3, 4]), np.array([0, 1, 2])), [1, 2])
    data = synthetic_basins(5, 1990, 1991, seed=4)
    sims, info = conceptual_baseline(data, (data.day_index("1990-06-01"), data.day_index("1990-12-31")),
                                     np.array([0, 1, 2]), np.array([3, 4]), gauged=False, generations=2, popsize=2,
                                     spinup=120)
    assert info["calibrated_basins"] == 3 and set(info["parameters"]) == {"s0000", "s0001", "s0002"}
    donor = info["donors"]["s0003"]
    assert donor in info["parameters"] and set(sims) == {3, 4}
    params = {k: np.array([v]) for k, v in info["parameters"][donor].items()}
    forcing = model_forcing(data.drivers[3:4].astype(np.float64))
    np.testing.assert_allclose(sims[3], simulate(params, *forcing)["flow"][0])


def test_the_baseline_appears_in_a_cli_runs_summary_and_report(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--config", TINY, "--run-dir", str(run), *QUICK]) == 0
    summary = json.loads((run / "summary.json").read_text())
    for split in ("val", "test"):
        assert set(summary["per_basin"][split]) == {"lstm", "climatology", "persistence", "conceptual"}
        assert set(summary["per_basin"][split]["conceptual"]) == set(summary["per_basin"][split]["lstm"])
    assert summary["scalars"]["conceptual_test_nse"] == summary["median"]["test"]["conceptual"]["nse"][0]
    c = summary["conceptual"]
    assert c["calibrated_basins"] == 6 and c["model_runs"] == 6 * 4 * 3 * 9 and c["spinup_days"] == 365
    assert "| conceptual |" in (run / "streamflow_report.md").read_text()

    ungauged = tmp_path / "ungauged"
    assert main(["train", "--config", TINY, "--run-dir", str(ungauged), *QUICK, "data.split=basins",
                 "data.folds=3"]) == 0
    summary = json.loads((ungauged / "summary.json").read_text())
    train = summary["protocol"]["basins"]["train"]
    assert set(summary["conceptual"]["parameters"]) == set(train)
    assert set(summary["conceptual"]["donors"]) == set(summary["protocol"]["basins"]["val"]) | \
        set(summary["protocol"]["basins"]["test"])
    assert set(summary["conceptual"]["donors"].values()) <= set(train)
    assert "conceptual" in summary["median"]["test"]


@pytest.mark.parametrize("overrides, message", [
    (["eval.conceptual_generations=0"], "generations >= 1.*generations=0"),
    (["eval.conceptual_popsize=0"], "popsize >= 1.*popsize=0"),
    (["eval.conceptual_objective=rmse"], "objective 'rmse' is not valid; use one of \\['kge', 'nse'\\]"),
    (["data.horizon=3", "data.test_period=[1994-01-01,1995-12-29]"], "simulation \\(horizon 1\\); got data.horizon=3"),
    (["data.source=camels_us", 'data.basins=["01022500"]', "data.drivers=[prcp,tmax,tmin]",
      "data.train_period=[2000-03-01,2000-12-31]", "data.val_period=[2001-01-01,2001-06-30]",
      "data.test_period=[2001-07-01,2002-06-30]"], "needs drivers .*\\['srad'\\] are not among"),
])
def test_bad_settings_are_named_before_training(tmp_path, capsys, overrides, message):
    run = tmp_path / "bad"
    assert main(["train", "--config", TINY, "--run-dir", str(run), *QUICK[:4], "eval.conceptual_baseline=true",
                 *overrides]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not run.exists()


def test_calibration_refuses_a_period_without_observations():
    data = synthetic_basins(1, 1990, 1990, seed=5)
    flow = data.flow[0].copy()
    flow[:] = np.nan
    forcing = model_forcing(data.drivers.astype(np.float64))
    with pytest.raises(ValueError, match="at least 2 observed days to score; got 0"):
        calibrate(forcing, flow, np.ones(len(flow), bool), generations=1, popsize=1)
    with pytest.raises(ValueError, match="spinup=400 days leaves no training day"):
        conceptual_baseline(data, (10, 300), np.array([0]), np.array([0]), True, spinup=400)
