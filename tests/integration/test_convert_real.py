"""End to end on real files: `orbit data convert` (a time window of real CMIP6 daily netCDF) -> `orbit pretrain`
a few steps on the converted store -> `orbit evaluate`."""
import json
from pathlib import Path

import pytest

from orbit.cli import main
from orbit.data import store

esmval = pytest.importorskip("esmvaltool_sample_data")
MIROC6_DAY_TA = sorted((Path(esmval.__file__).parent / "data" / "timeseries" / "CMIP6").glob(
    "**/MIROC6/historical/**/day/ta/**/ta_day_MIROC6_*.nc"))


def test_convert_window_pretrain_and_evaluate_on_real_cmip6(tmp_path, capsys):
    assert len(MIROC6_DAY_TA) == 3  # 2000, 2001, 2002: one file per year, joined in time
    root = tmp_path / "stores"
    assert main(["data", "convert", *map(str, MIROC6_DAY_TA), "--output", str(root / "miroc6.zarr"),
                 "--source", "miroc6", "--grid", "16x32", "--regional", "--time", "2000-03-01", "2002-11-30",
                 "--levels", "850", "--train-years", "2000", "2000"]) == 0
    ds = store.open_store(root / "miroc6.zarr")
    assert str(ds["time"].values[0])[:10] == "2000-03-01" and str(ds["time"].values[-1])[:10] == "2002-11-30"
    assert store.channel_names(ds) == ["t850"] and ds.attrs["time_step"] == "1D"

    run_dir = tmp_path / "run"
    assert main(["pretrain", "--config", "configs/pretrain/tiny.yaml", "--run-dir", str(run_dir),
                 f"data.root={root}", "data.sources=[miroc6]", "data.channels=[t850]",
                 "data.train_years=[2000,2000]", "data.leads_hours=[24,48]", "eval.validation_years=[2001,2001]",
                 "eval.years=[2002,2002]", "eval.leads_hours=[24]", "eval.max_samples=4",
                 "model.embed_dim=32", "model.depth=1", "model.num_heads=2", "model.patch_size=4",
                 "data.solar_forcing=false", "data.batch_size=4", "train.max_steps=4", "train.warmup_steps=1", "train.log_every=2",
                 "train.ckpt_every=4"]) == 0
    assert main(["evaluate", "--run-dir", str(run_dir)]) == 0
    evaluation = json.loads((run_dir / "evaluation" / "evaluation.json").read_text())
    assert evaluation["step"] == 4
    scores = evaluation["skill"]["t850"]["24"]
    assert all(scores[name]["rmse"] > 0 for name in ("model", "persistence", "climatology"))
