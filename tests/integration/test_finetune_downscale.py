"""End to end through the CLI: make downscaling pairs, fine-tune from the pretrained checkpoint, evaluate."""
import json
from pathlib import Path

import numpy as np
import xarray as xr

from orbit.cli import main
from orbit.data.sampler import evenly_spaced

CONFIG = str(Path(__file__).resolve().parents[2] / "configs/finetune/downscale/tiny.yaml")


def test_finetune_and_evaluate_downscaling(downscale_pairs, pretrained_ckpt, tmp_path, capsys):
    run_dir = tmp_path / "run"
    overrides = [f"options.store={downscale_pairs}", "data.train_years=[1990,1990]", "eval.validation_years=[1991,1991]",
                 "eval.years=[1992,1992]", "data.batch_size=2", "train.max_steps=2", "train.warmup_steps=1", "train.log_every=1",
                 "train.ckpt_every=2", "eval.max_samples=4", "eval.batch_size=2"]
    assert main(["finetune", "--config", CONFIG, "--init", str(pretrained_ckpt), "--run-dir", str(run_dir),
                 *overrides]) == 0
    table = (run_dir / "downscale_scores.md").read_text()
    assert "| bicubic | tp |" in table and "| bicubic + statics regression | tp |" in table and "RMSE >p99.99" in table
    assert "Validation years [1991, 1991]" in table
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["validation_scores"].keys() == summary["scores"].keys()
    assert summary["validation_scores"]["model"]["t2m"]["rmse"] != summary["scores"]["model"]["t2m"]["rmse"]
    assert (run_dir / "downscale_maps.png").stat().st_size > 0

    out = tmp_path / "evaluation"
    assert main(["evaluate", "--run-dir", str(run_dir), "--out", str(out)]) == 0
    predictions = xr.open_zarr(out / "predictions.zarr", consolidated=True)
    assert set(predictions.data_vars) == {"t2m", "u10", "v10", "tp", "z500"}
    assert predictions["t2m"].dims == ("time", "lat", "lon") and predictions["t2m"].shape == (4, 64, 128)
    assert predictions["lat"].attrs["units"] == "degrees_north" and predictions["tp"].attrs["units"] == "mm"
    truth = xr.open_zarr(downscale_pairs, consolidated=True)
    test_times = truth["time"].sel(time="1992").values  # a leap year: 366 daily steps
    np.testing.assert_array_equal(predictions["time"].values, test_times[evenly_spaced(len(test_times), 4)])
    assert float(predictions["tp"].min()) >= 0.0
    assert 200.0 < float(predictions["t2m"].mean()) < 320.0  # physical units, not normalized


def test_downscale_rejects_overlapping_years(downscale_pairs, tmp_path, capsys):
    code = main(["finetune", "--config", CONFIG, "--run-dir", str(tmp_path / "run"), f"options.store={downscale_pairs}",
                 "data.train_years=[1990,1991]", "eval.years=[1991,1991]", "finetune.replace=[]"])
    assert code == 2 and "overlaps" in capsys.readouterr().err
    code = main(["finetune", "--config", CONFIG, "--run-dir", str(tmp_path / "run2"), f"options.store={downscale_pairs}",
                 "data.train_years=[1990,1990]", "eval.validation_years=[1991,1991]", "eval.years=[1991,1992]",
                 "finetune.replace=[]"])
    assert code == 2 and "eval.validation_years [1991, 1991] overlaps eval.years" in capsys.readouterr().err
