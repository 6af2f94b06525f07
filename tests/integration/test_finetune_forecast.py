"""End to end through the CLI: `orbit finetune` the forecast task from a pretrained checkpoint, then
`orbit evaluate` it and open the predictions with xarray."""
import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from orbit.cli import main
from orbit.synthetic.toy_earth import synthesize

CONFIG = str(Path(__file__).resolve().parents[2] / "configs/finetune/forecast/tiny.yaml")


@pytest.fixture(scope="module")
def reanalysis_root(tmp_path_factory):
    """A toy reanalysis on the `pretrained_ckpt` grid (16x32): 1990 to fine-tune on, 1991 held out."""
    root = tmp_path_factory.mktemp("reanalysis")
    synthesize(root, sources=["reanalysis"], years=(1990, 1991), grid=(16, 32), train_years=(1990, 1990))
    return root


def small_run(root) -> list[str]:
    return [f"data.root={root}", "data.train_years=[1990,1990]", "eval.years=[1991,1991]", "eval.validation_years=null",
            "data.leads_hours=[6,24]", "eval.leads_hours=[6,12,24]", "options.map_lead_hours=24",
            "eval.max_samples=3", "eval.batch_size=4", "data.batch_size=2",
            "train.max_steps=3", "train.warmup_steps=1", "train.log_every=1", "train.ckpt_every=3"]


def test_finetune_then_evaluate_writes_scorecard_and_predictions(reanalysis_root, pretrained_ckpt, tmp_path):
    run_dir = tmp_path / "run"
    assert main(["finetune", "--config", CONFIG, "--init", str(pretrained_ckpt), "--run-dir", str(run_dir),
                 "finetune.freeze=backbone", *small_run(reanalysis_root)]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["step"] == 3 and summary["init"] == str(pretrained_ckpt)
    skill = summary["skill"]
    assert sorted(skill) == sorted(["z500", "t850", "t2m", "u10", "v10"])
    assert skill["z500"]["12"]["direct"]["rmse"] > 0 and skill["z500"]["12"]["rollout"]["rmse"] > 0
    for name in ("scorecard.md", "skill_rmse.png", "skill_acc.png", "forecast_maps_z500.png", "loss.png"):
        assert (run_dir / name).is_file(), name

    out = tmp_path / "eval"
    assert main(["evaluate", "--run-dir", str(run_dir), "--out", str(out), "--format", "netcdf"]) == 0
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["skill"]["t2m"]["24"]["direct"] == skill["t2m"]["24"]["direct"]  # same weights, same data
    with xr.open_dataset(out / "predictions.nc") as ds:
        assert ds["t850"].dims == ("init_time", "lead_time", "lat", "lon")
        assert ds.sizes == {"init_time": 3, "lead_time": 3, "lat": 16, "lon": 32}
        assert ds["t850"].attrs["units"] == "K"
        assert (ds["lead_time"].values == np.array([6, 12, 24], dtype="timedelta64[h]")).all()
        assert str(ds["init_time"].values[0])[:4] == "1991"
        assert np.isfinite(ds["t850"].values).all() and 200 < float(ds["t850"].mean()) < 320  # kelvin


def test_from_scratch_with_a_data_fraction_trains_and_scores(reanalysis_root, tmp_path):
    run_dir = tmp_path / "scratch"
    assert main(["finetune", "--config", CONFIG, "--run-dir", str(run_dir), "finetune.data_fraction=0.1",
                 "model.embed_dim=32", "model.depth=1", "model.num_heads=2", *small_run(reanalysis_root)]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["data_fraction"] == 0.1 and summary["init"] is None
    assert summary["skill"]["u10"]["6"]["persistence"]["rmse"] > 0
