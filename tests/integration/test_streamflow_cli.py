"""The streamflow plug-in end to end through the CLI: every model family trains and is scored per basin
and lead on synthetic basins, the shared CAMELS-US basins train and evaluate, `orbit evaluate` writes
netCDF with basin and time coordinates, `orbit explain` attributes, the ungauged protocol keeps basins
apart, the checkpoint is chosen on the validation loss, two data-parallel ranks match one process, and bad
input fails before training, naming it."""
import json

import pytest
import xarray as xr

from cli_runs import REPO, step_losses, torchrun
from orbit.cli import main

TINY = str(REPO / "configs/plugins/streamflow/tiny.yaml")
CAMELS = str(REPO / "configs/plugins/streamflow/camels.yaml")
FAST = ["train.max_steps=6", "train.log_every=2", "train.ckpt_every=6", "train.warmup_steps=1", "data.n_basins=6",
        "data.seq_len=15"]


def _summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def test_tiny_run_trains_evaluates_and_explains(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", TINY, "--run-dir", str(run), "train.max_steps=40", "train.log_every=10",
                 "train.ckpt_every=40"]) == 0
    summary = _summary(run)
    per_basin = summary["per_basin"]["test"]
    assert set(per_basin) == {"lstm", "climatology", "persistence"} and len(per_basin["lstm"]) == 12
    assert {"nse", "kge", "fhv", "peak_timing"} <= set(per_basin["lstm"]["s0000"])
    assert summary["scalars"]["test_nse"] > summary["scalars"]["climatology_test_nse"] - 0.5  # it learned something
    losses = step_losses(run)
    assert losses[40] < losses[10]
    assert (run / "streamflow_report.md").is_file() and (run / "streamflow_nse_cdf.png").is_file()

    assert main(["evaluate", "--run-dir", str(run), "--format", "netcdf"]) == 0
    predictions = xr.open_dataset(run / "evaluation" / "predictions.nc")
    assert predictions.q_pred.dims == ("basin", "time", "lead") and predictions.sizes["basin"] == 12
    assert str(predictions.time.values[0])[:10] == "1993-12-31"  # issue day of the first test target, 1994-01-01
    assert json.loads((run / "evaluation" / "evaluation.json").read_text())["scalars"]["test_nse"] == \
        pytest.approx(summary["scalars"]["test_nse"], rel=1e-5)

    capsys.readouterr()
    assert main(["explain", "--run-dir", str(run), "--methods", "ig", "--samples", "16"]) == 0
    explained = json.loads((run / "explain" / "explanations.json").read_text())
    assert set(explained["ig_importance"]) >= {"prcp", "noise", "static", "q_past"}
    assert (run / "explain" / "attribution_ig.png").is_file()


@pytest.mark.parametrize("family", ["lstm", "geo_lstm", "lstm_ed", "tst", "imv_lstm"])
def test_every_family_forecasts_through_the_cli(tmp_path, family):
    run = tmp_path / family
    hidden = "model.hidden=8" if family == "tst" else "model.hidden=6"
    assert main(["train", "--config", TINY, "--run-dir", str(run), *FAST, f"model.family={family}", hidden,
                 "data.horizon=3", "data.past_flow=true", "data.forecast_error=0.1",
                 "data.test_period=[1994-01-01,1995-12-29]"]) == 0
    median = _summary(run)["median"]["test"]
    assert set(median) == {family, "climatology", "persistence"}
    assert all(len(median[name]["nse"]) == 3 and len(median[name]["kge"]) == 3 for name in median)


def test_pi3nn_intervals_train_as_three_phases_and_are_written(tmp_path):
    run = tmp_path / "intervals"
    assert main(["train", "--config", TINY, "--run-dir", str(run), *FAST, "options.intervals=true",
                 "options.bound_steps=4", "options.confidence=0.8"]) == 0
    intervals = _summary(run)["intervals"]
    assert intervals["val"]["picp"] == pytest.approx(0.8, abs=0.02)  # calibrated on the validation period
    assert 0 < intervals["test"]["picp"] <= 1 and [r["year"] for r in intervals["test"]["by_year"]] == [1994, 1995]
    assert set(step_losses(run)) == set(range(2, 15, 2))  # 6 mean + 4 upper + 4 lower steps
    assert {phase: s["metric"] for phase, s in _summary(run)["selected"].items()} == \
        {"mean": "val_mean_loss", "upper": "val_upper_loss", "lower": "val_lower_loss"}  # each on its own loss
    assert main(["evaluate", "--run-dir", str(run), "--format", "netcdf"]) == 0
    p = xr.open_dataset(run / "evaluation" / "predictions.nc")
    assert bool((p.q_lower <= p.q_pred).all()) and bool((p.q_pred <= p.q_upper).all())


def test_camels_basins_train_and_evaluate(tmp_path):
    run = tmp_path / "camels"
    assert main(["train", "--config", CAMELS, "--run-dir", str(run), "train.max_steps=6", "train.log_every=2",
                 "train.ckpt_every=6", "train.eval_every=3", "model.hidden=8"]) == 0
    summary = _summary(run)
    assert set(summary["per_basin"]["test"]["geo_lstm"]) == {"01022500", "01547700", "02064000"}
    assert summary["protocol"]["periods"]["test"] == ["2002-01-01", "2002-12-31"]
    assert main(["evaluate", "--run-dir", str(run), "--format", "netcdf"]) == 0
    predictions = xr.open_dataset(run / "evaluation" / "predictions.nc")
    assert list(predictions.basin.values) == ["01022500", "01547700", "02064000"]
    assert predictions.sizes["time"] == 365


def test_ungauged_protocol_keeps_basins_apart(tmp_path):
    run = tmp_path / "ungauged"
    assert main(["train", "--config", TINY, "--run-dir", str(run), *FAST, "model.family=geo_lstm",
                 "data.split=basins", "data.folds=3", "data.fold=1"]) == 0
    summary = _summary(run)
    basins = summary["protocol"]["basins"]
    assert len(basins["train"]) == len(basins["val"]) == len(basins["test"]) == 2
    assert not set(basins["train"]) & set(basins["test"]) and not set(basins["val"]) & set(basins["test"])
    assert set(summary["per_basin"]["test"]) == {"geo_lstm", "climatology"}  # no persistence without a gauge
    assert set(summary["per_basin"]["test"]["geo_lstm"]) == set(basins["test"])


def test_checkpoint_is_chosen_on_the_validation_loss(tmp_path):
    """select_mode=max keeps the worst validation state (an early step, so the restore is exercised): the
    run ends with that step's weights, and its final scores are theirs."""
    run = tmp_path / "select"
    assert main(["train", "--config", TINY, "--run-dir", str(run), *FAST, "train.max_steps=30",
                 "train.eval_every=10", "train.ckpt_every=30", "train.select_mode=max"]) == 0
    summary = _summary(run)
    chosen = summary["selected"]["mean"]
    assert chosen["metric"] == "val_mean_loss" and chosen["step"] in (10, 20)
    assert summary["scalars"]["val_mean_loss"] == pytest.approx(chosen["value"], rel=1e-5)
    assert "Phase 'mean': weights of step" in (run / "streamflow_report.md").read_text()


def test_intervals_refuse_one_selection_key_for_three_networks(tmp_path, capsys):
    assert main(["train", "--config", TINY, "--run-dir", str(tmp_path / "bad"), *FAST, "options.intervals=true",
                 "train.select_best=val_mean_loss"]) == 2
    assert "use train.select_best=val_{phase}_loss" in capsys.readouterr().err


@pytest.mark.parametrize("override, message", [
    ('data.basins=["01022500","09999999"]', "basin '09999999'"),
    ('data.test_period=["2002-06-01","2003-06-30"]', "test_period 2002-06-01..2003-06-30 lies outside the data"),
    ('data.val_period=["2001-06-01","2001-12-31"]', "periods train and val overlap"),
    ("data.split=basins", "split=basins needs folds >= 3|at least 5 basins"),
])
def test_bad_input_is_named_before_training(tmp_path, capsys, override, message):
    run = tmp_path / "bad"
    assert main(["train", "--config", CAMELS, "--run-dir", str(run), override]) == 2
    assert __import__("re").search(message, capsys.readouterr().err)
    assert not run.exists()


def test_two_data_parallel_ranks_match_one_process(tmp_path):
    args = [*FAST, "train.max_steps=4", "train.log_every=1", "train.ckpt_every=4"]
    base = ["train", "--config", "configs/plugins/streamflow/tiny.yaml", "--run-dir"]
    torchrun([*base, str(tmp_path / "one"), *args, "data.batch_size=32"], 1)
    torchrun([*base, str(tmp_path / "two"), *args, "data.batch_size=16", "parallel.dp_shard=2"], 2)
    one, two = step_losses(tmp_path / "one"), step_losses(tmp_path / "two")
    assert one.keys() == two.keys() == {1, 2, 3, 4}
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5), step
