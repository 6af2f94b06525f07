"""The toy land model's GPP ensemble (orbit/plugins/dbuq/gpp_ensemble.py) and the land emulator on it, on a tiny
grid (16 x 32: 118 vegetated land cells), 3 years and a loose shared spin-up: `orbit dbuq ensemble` (shapes, units,
ranges, determinism by seed, GPP's response to the light-use efficiency), `orbit train` of task land_emulator with
reduce=pca and reduce=none, `orbit dbuq emulate` with resampled runs, and bad input."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

from cli_runs import REPO

from orbit.plugins.dbuq import gpp_ensemble as ge

TINY = dict(grid=(16, 32), years=3, adjust_years=2, spinup_tol=30.0)
CONFIG = "configs/plugins/dbuq/emulator_toy_gpp.yaml"


def _orbit(args, timeout=300):
    return subprocess.run([sys.executable, "-m", "orbit", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=timeout)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpp") / "gpp.zarr"
    done = _orbit(["dbuq", "ensemble", "--runs", "40", "--grid", "16", "32", "--years", "3", "--adjust-years", "2",
                   "--spinup-tol", "30", "--seed", "0", "--out", str(path)])
    assert done.returncode == 0, done.stderr[-4000:]
    return path


def test_ensemble_store_shapes_units_ranges_and_determinism(store):
    ds = xr.open_zarr(store, consolidated=True)
    assert dict(ds.gpp.sizes) == {"run": 40, "cell": 118, "year": 3}
    assert dict(ds.parameters.sizes) == {"run": 40, "parameter": 8}
    assert list(ds.parameter.values) == list(ge.NAMES) and ds.gpp.attrs["units"] == "gC m-2 yr-1"
    assert list(ds.year.values) == [1991, 1992, 1993] and "lue_scale in [0.75, 1.25]" in ds.attrs["parameter_ranges"]
    x, low, high = ds.parameters.values, ds.low.values, ds.high.values
    assert np.all((x >= low) & (x <= high)) and np.all(x.std(0) > 0.1 * (high - low))
    gpp = ds.gpp.values
    assert np.isfinite(gpp).all() and gpp.min() >= 0 and np.median(gpp) > 100
    assert np.abs(np.diff(gpp, axis=2)).mean() > 1.0  # the years differ (interannual forcing)
    again = ge.generate(40, seed=0, log=lambda _: None, **TINY)
    np.testing.assert_array_equal(again.gpp.values, gpp)
    np.testing.assert_array_equal(again.parameters.values, x)
    other = ge.generate(2, seed=1, log=lambda _: None, **TINY)
    assert not np.allclose(other.parameters.values, x[:2])


def test_gpp_rises_with_the_light_use_efficiency():
    setup = ge.shared_setup(TINY["grid"], 2, seed=0, spinup_tol=TINY["spinup_tol"], log=lambda _: None)
    mid = (ge.prior().a + ge.prior().b) / 2
    high = mid.copy()
    high[ge.NAMES.index("lue_scale")] = 1.25
    low = mid.copy()
    low[ge.NAMES.index("lue_scale")] = 0.75
    runs = [ge.run_one(v, setup.state, setup.base, setup.forcings, setup.site, 2)[0] for v in (low, mid, high)]
    assert runs[0].sum() < runs[1].sum() < runs[2].sum()
    assert np.mean(runs[2] > runs[0]) > 0.9  # nearly every cell-year (N limitation may hold back a few)


@pytest.mark.parametrize("reduce", ["pca", "none"])
def test_emulator_trains_on_the_ensemble_through_the_cli(store, tmp_path, reduce):
    run = tmp_path / reduce
    done = _orbit(["train", "--config", CONFIG, "--run-dir", str(run), f"data.path={store}", f"model.reduce={reduce}",
                   "data.val_fraction=0.2", "data.holdout_fraction=0.2", "train.max_steps=300",
                   "train.eval_every=100", "train.ckpt_every=300", "train.log_every=100"])
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads((run / "summary.json").read_text())
    sc = summary["scalars"]
    assert summary["runs"] == {"train": 24, "val": 8, "test": 8}
    if reduce == "pca":
        assert 1 <= sc["components"] <= 23  # at most n_train - 1 components
    else:
        assert sc["components"] == 118 * 3
    assert sc["val_r2"] > 0.5 and sc["test_r2"] > 0 and sc["test_rel_rmse"] < 1.0  # beats the ensemble mean
    assert "toy_gpp" in (run / "emulator_report.md").read_text()


def test_learning_curve_resamples_the_training_runs(store, tmp_path):
    out = tmp_path / "lc"
    done = _orbit(["dbuq", "emulate", "--config", CONFIG, "--reduce", "pca", "--sizes", "10", "--seeds", "2",
                   "--resample-runs", "--out", str(out), f"data.path={store}", "data.val_fraction=0.2",
                   "data.holdout_fraction=0.2", "train.max_steps=50", "train.eval_every=50", "train.ckpt_every=50"])
    assert done.returncode == 0, done.stderr[-4000:]
    rows = json.loads((out / "learning_curve.json").read_text())
    assert [(r["n_train"], r["seed"]) for r in rows] == [(10, 0), (10, 1)]
    assert rows[0]["val_r2"] != rows[1]["val_r2"] and (out / "learning_curve.png").is_file()


def test_bad_input_is_refused_with_clear_errors(store, tmp_path):
    done = _orbit(["dbuq", "ensemble", "--runs", "1", "--out", str(tmp_path / "x.zarr")])
    assert done.returncode != 0 and "runs >= 2" in done.stderr and not (tmp_path / "x.zarr").exists()
    done = _orbit(["dbuq", "ensemble", "--runs", "4", "--out", str(store)])
    assert done.returncode != 0 and "exists" in done.stderr
    done = _orbit(["train", "--config", CONFIG, "--run-dir", str(tmp_path / "r"), "data.path=/nonexistent/gpp.zarr"])
    assert done.returncode != 0 and "orbit dbuq ensemble" in done.stderr
    done = _orbit(["train", "--config", CONFIG, "--run-dir", str(tmp_path / "r"), "data.problem=gpp"])
    assert done.returncode != 0 and "toy_gpp" in done.stderr
