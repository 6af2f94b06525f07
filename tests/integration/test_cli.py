"""End to end through the `orbit` CLI on toy-Earth data: pretrain, resume, bad input."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr
import zarr

from orbit.cli import main, parse_args

CONFIG = "configs/pretrain/tiny.yaml"


def _tiny_run(toy_root, run_dir, *extra):
    return ["pretrain", "--config", CONFIG, "--run-dir", str(run_dir), f"data.root={toy_root}",
            "data.sources=[cmip_a,cmip_b]", "data.train_years=[1990,1990]", "eval.years=[1991,1991]", "eval.validation_years=null",
            "data.leads_hours=[6,24]", "eval.leads_hours=[6,24]", "eval.max_samples=8",
            "model.embed_dim=32", "model.depth=1", "model.num_heads=2", "model.patch_size=4",
            "data.batch_size=4", "train.warmup_steps=2", "train.log_every=2", "train.ckpt_every=3", *extra]


def _steps(run_dir):
    with open(run_dir / "metrics.csv") as handle:
        return [int(row["step"]) for row in csv.DictReader(handle)]


def test_pretrain_writes_a_complete_run_dir_and_resumes(toy_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(_tiny_run(toy_root, run_dir, "train.max_steps=6")) == 0
    for name in ("config.yaml", "metrics.csv", "summary.json", "run_info.json", "loss.png", "skill_rmse.png",
                 "forecast_example.png"):
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "tensorboard").iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["step"] == 6
    scores = summary["skill"]["z500"]["24"]
    assert set(scores) == {"model", "persistence", "climatology"}
    assert all(scores[name]["rmse"] > 0 for name in scores)
    assert "RMSE persistence" in capsys.readouterr().out
    assert _steps(run_dir) == [2, 4, 6]

    # Another run into the same directory would overwrite its checkpoints: refused up front.
    assert main(_tiny_run(toy_root, run_dir, "train.max_steps=8")) == 2
    assert "--resume auto" in capsys.readouterr().err
    assert main([*_tiny_run(toy_root, run_dir, "train.max_steps=8"), "--resume", "auto"]) == 0
    assert _steps(run_dir) == [2, 4, 6, 8]

    # `orbit evaluate` scores the newest checkpoint again and writes the forecasts as netCDF
    assert main(["evaluate", "--run-dir", str(run_dir), "--format", "netcdf"]) == 0
    out = run_dir / "evaluation"
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["step"] == 8
    assert evaluation["skill"]["z500"]["24"]["model"]["rmse"] == pytest.approx(
        json.loads((run_dir / "summary.json").read_text())["skill"]["z500"]["24"]["model"]["rmse"], rel=1e-5)
    with xr.open_dataset(out / "predictions.nc") as predictions:
        assert predictions["z500"].dims == ("init_time", "lead_time", "lat", "lon")
        assert predictions["t2m"].attrs["units"] == "K"
        assert list(predictions.lead_time.values.astype("timedelta64[h]").astype(int)) == [6, 24]
        assert np.isfinite(predictions["z500"].values).all()


@pytest.mark.parametrize("override, message", [
    ("train.max_step=5", "unknown config key 'train.max_step'"),
    ("model.preset=huge", "unknown model preset 'huge'"),
    ("data.sources=[cmip_b]", "tp"),  # cmip_b has no precipitation: a channel in no store
    ("data.root=/nonexistent", "orbit data synth"),
    ("eval.years=[1990,1990]", "overlap"),
])
def test_bad_input_fails_before_training(toy_root, tmp_path, capsys, override, message):
    run_dir = tmp_path / "run"
    assert main(_tiny_run(toy_root, run_dir, "train.max_steps=2", override)) == 2
    assert message in capsys.readouterr().err
    assert not (run_dir / "checkpoints").exists()


def _copy_store(src, dst, **change):
    ds = xr.open_zarr(src, consolidated=True).load()
    for name, fn in change.items():
        ds = fn(ds)
    ds.to_zarr(dst, mode="w", zarr_format=2, consolidated=True)


def test_mismatched_grids_are_rejected(toy_root, tmp_path, capsys):
    _copy_store(toy_root / "cmip_b.zarr", tmp_path / "coarse.zarr",
                coarsen=lambda ds: ds.isel(lat=slice(0, None, 2), lon=slice(0, None, 2)))
    _copy_store(toy_root / "cmip_a.zarr", tmp_path / "cmip_a.zarr")
    args = _tiny_run(tmp_path, tmp_path / "run", "data.sources=[cmip_a,coarse]", "data.channels=[t2m,z500]")
    assert main(args) == 2
    assert "grid" in capsys.readouterr().err


def test_nan_in_input_data_is_rejected(toy_root, tmp_path, capsys):
    _copy_store(toy_root / "cmip_a.zarr", tmp_path / "cmip_a.zarr")
    array = zarr.open_group(str(tmp_path / "cmip_a.zarr"), mode="r+")["t2m"]
    values = array[:5]
    values[2, 3, 4] = np.nan
    array[:5] = values
    args = _tiny_run(tmp_path, tmp_path / "run", "data.sources=[cmip_a]")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "NaN" in err and "t2m" in err


def test_console_script_and_module_entry_points():
    info = subprocess.run([sys.executable, "-m", "orbit", "info", "--model", "tiny"], capture_output=True,
                          text=True, check=True)
    assert json.loads(info.stdout)["params"] > 0
    script = subprocess.run([str(__import__("pathlib").Path(sys.executable).with_name("orbit")), "--help"],
                            capture_output=True, text=True, check=True)
    assert "pretrain" in script.stdout


def test_overrides_may_follow_options_anywhere_on_the_line():
    args = parse_args(["finetune", "--config", "c.yaml", "finetune.replace=[]", "--run-dir", "r", "train.lr=3e-3",
                       "--init", "ck", "train.max_steps=2"])
    assert args.overrides == ["finetune.replace=[]", "train.lr=3e-3", "train.max_steps=2"] and args.init == "ck"
    with pytest.raises(SystemExit):
        parse_args(["finetune", "--config", "c.yaml", "--run-dir", "r", "--bogus", "x"])
    with pytest.raises(SystemExit):
        parse_args(["data", "synth", "--root", "r", "stray=1"])  # no overrides there
