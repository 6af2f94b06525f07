"""ELM spin-up emulator end to end through the CLI: generate a tiny training set, fine-tune from the
pretrained checkpoint, evaluate, and open the predictions with xarray."""
import json

import numpy as np
import pytest
import xarray as xr

from orbit.cli import main
from orbit.synthetic import land_model as lm
from orbit.tasks.elm_spinup import STARTS

CONFIG = "configs/finetune/elm_spinup/tiny.yaml"


@pytest.fixture(scope="module")
def elm_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("elm") / "elm.zarr"
    assert main(["data", "elm", "--out", str(path), "--grid", "16x32", "--tol", "5", "--max-years", "3000",
                 "--holdout", "0.3", "--validation", "0.15", "--block", "4", "--buffer", "1"]) == 0
    return path


def test_finetune_and_evaluate_the_elm_emulator(elm_store, pretrained_ckpt, tmp_path):
    run_dir = tmp_path / "run"
    assert main(["finetune", "--config", CONFIG, "--init", str(pretrained_ckpt), "--run-dir", str(run_dir),
                 f"options.store={elm_store}", "train.max_steps=3", "train.warmup_steps=1", "train.log_every=1",
                 "train.ckpt_every=3", "data.batch_size=8", "options.spinup_cells=4",
                 "options.max_spinup_years=30", "options.mlp_hidden=16"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["step"] == 3
    for method in ("emulator", "mlp", "ridge"):
        assert {"val", "test"} <= set(summary["r2"][method]) and set(summary["r2"][method]["test"]) == set(lm.OUTPUTS)
    assert {"train_r2_min", "val_r2_min", "mlp_test_r2_min", "ridge_val_r2_median"} <= set(summary["scalars"])
    for name in ("elm_report.md", "elm_scatter.png", "elm_drift.png", "spinup_validation.json", "loss.png"):
        assert (run_dir / name).is_file(), name
    validation = json.loads((run_dir / "spinup_validation.json").read_text())
    store = xr.open_zarr(elm_store, consolidated=True)
    for split in ("validation", "test"):  # judged by the truth's own criterion, from every start
        result = validation[split]
        assert result["cells"] == 4 and result["tol"] == store.attrs["tol_gc_m2_yr"] == 5.0
        assert set(STARTS) <= set(result) and set(result["emulated"]["pool_distance_done"]) == set(lm.STATE)
    assert "independent" in (run_dir / "elm_report.md").read_text()

    out = tmp_path / "eval"
    assert main(["evaluate", "--run-dir", str(run_dir), "--out", str(out), "options.spinup_cells=0"]) == 0
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["step"] == 3 and np.isfinite(evaluation["scalars"]["test_r2_median"])
    pred = xr.open_zarr(out / "predictions.zarr", consolidated=True)
    assert pred.sizes["cell"] == store.sizes["cell"]
    assert set(lm.OUTPUTS) <= set(pred.data_vars)
    assert pred.soil3c.attrs["units"] == "gC m-2" and pred.gpp.attrs["units"] == "gC m-2 yr-1"
    assert pred.lat.attrs["units"] == "degrees_north" and pred.lon.attrs["units"] == "degrees_east"
    np.testing.assert_array_equal(pred.split.values, store.split.values)
    # nloss is derived from the equilibrium N balance, not predicted on its own
    np.testing.assert_allclose(pred.nloss.values, store.ndep.values + pred.nfix.values, rtol=1e-5)


def test_missing_store_is_a_clear_error(tmp_path, capsys):
    code = main(["finetune", "--config", CONFIG, "--run-dir", str(tmp_path / "run"),
                 f"options.store={tmp_path / 'nope.zarr'}", "finetune.replace=[]"])
    assert code == 2 and "orbit data elm" in capsys.readouterr().err
