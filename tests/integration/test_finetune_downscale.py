"""End to end through the CLI: make downscaling pairs, fine-tune from the pretrained checkpoint, evaluate."""
from pathlib import Path

import numpy as np
import xarray as xr

from orbit.cli import main
from orbit.data.sampler import evenly_spaced

CONFIG = str(Path(__file__).resolve().parents[2] / "configs/finetune/downscale/tiny.yaml")


def test_finetune_and_evaluate_downscaling(downscale_pairs, pretrained_ckpt, tmp_path, capsys):
    run_dir = tmp_path / "run"
    overrides = [f"options.store={downscale_pairs}", "data.train_years=[1990,1990]", "eval.years=[1991,1991]",
                 "data.batch_size=2", "train.max_steps=2", "train.warmup_steps=1", "train.log_every=1",
                 "train.ckpt_every=2", "eval.max_samples=4", "eval.batch_size=2"]
    assert main(["finetune", "--config", CONFIG, "--init", str(pretrained_ckpt), "--run-dir", str(run_dir),
                 *overrides]) == 0
    table = (run_dir / "downscale_scores.md").read_text()
    assert "| bicubic | tp |" in table and "| bicubic + statics regression | tp |" in table and "RMSE >p99.99" in table
    assert (run_dir / "downscale_maps.png").stat().st_size > 0

    out = tmp_path / "evaluation"
    assert main(["evaluate", "--run-dir", str(run_dir), "--out", str(out)]) == 0
    predictions = xr.open_zarr(out / "predictions.zarr", consolidated=True)
    assert set(predictions.data_vars) == {"t2m", "u10", "v10", "tp", "z500"}
    assert predictions["t2m"].dims == ("time", "lat", "lon") and predictions["t2m"].shape == (4, 64, 128)
    assert predictions["lat"].attrs["units"] == "degrees_north" and predictions["tp"].attrs["units"] == "mm"
    truth = xr.open_zarr(downscale_pairs, consolidated=True)
    np.testing.assert_array_equal(predictions["time"].values, truth["time"].values[365:][evenly_spaced(365, 4)])
    assert float(predictions["tp"].min()) >= 0.0
    assert 200.0 < float(predictions["t2m"].mean()) < 320.0  # physical units, not normalized


def test_downscale_rejects_overlapping_years(downscale_pairs, tmp_path, capsys):
    code = main(["finetune", "--config", CONFIG, "--run-dir", str(tmp_path / "run"), f"options.store={downscale_pairs}",
                 "data.train_years=[1990,1991]", "eval.years=[1991,1991]", "finetune.replace=[]"])
    assert code == 2 and "overlap" in capsys.readouterr().err
