"""Streamflow data: the CAMELS-US reader (units, missing values, clear errors), the synthetic basins
(determinism, the warming trend, the unused control driver), windows and their normalisation."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from orbit.plugins.streamflow.basins import check_periods, parse_period
from orbit.plugins.streamflow.camels import read_camels_us
from orbit.plugins.streamflow.synthetic import DRIVERS, runoff, synthetic_basins
from orbit.plugins.streamflow.windows import WindowBatches, Windows

CAMELS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "camels_us"
BASINS = ["01022500", "01547700", "02064000"]


def _read(root=CAMELS, basins=BASINS):
    return read_camels_us(root, basins, ["prcp", "tmax", "tmin"], ["area_gages2", "p_mean"])


def test_camels_reader_converts_cfs_to_mm_per_day_with_the_forcing_area():
    data = _read()
    assert data.drivers.shape == (3, 1096, 3) and str(data.dates[0]) == "2000-01-01"
    area = float((CAMELS / "basin_mean_forcing/daymet/01022500_lump_cida_forcing_leap.txt").read_text().split("\n")[2])
    # first line of 01022500_streamflow_qc.txt: 255 cfs
    assert data.flow[0, 0] == pytest.approx(255.0 * 0.3048 ** 3 * 86400 * 1000 / area)
    assert data.static[0, 0] == pytest.approx(573.6)  # area_gages2 of 01022500 (km^2)


def _copy_basin(tmp_path, basin="01022500"):
    for sub in ("basin_mean_forcing/daymet", "usgs_streamflow"):
        (tmp_path / sub).mkdir(parents=True)
    shutil.copy(CAMELS / f"basin_mean_forcing/daymet/{basin}_lump_cida_forcing_leap.txt",
                tmp_path / "basin_mean_forcing/daymet")
    shutil.copytree(CAMELS / "camels_attributes_v2.0", tmp_path / "camels_attributes_v2.0")
    return tmp_path / "usgs_streamflow" / f"{basin}_streamflow_qc.txt"


def test_missing_flow_is_nan_and_an_all_missing_period_names_basin_and_dates(tmp_path):
    flow_file = _copy_basin(tmp_path)
    lines = (CAMELS / "usgs_streamflow/01022500_streamflow_qc.txt").read_text().splitlines()
    cut = [ln[:20] + "  -999.00 M" if ln[9:13] in ("2001", "2002") else ln for ln in lines]
    flow_file.write_text("\n".join(cut) + "\n")
    data = _read(tmp_path, ["01022500"])
    year = data.dates.astype("datetime64[Y]").astype(int) + 1970
    assert str(data.dates[-1]) == "2003-12-31"  # this basin's forcing runs a year past its flow record
    assert np.isnan(data.flow[0, year >= 2001]).all() and np.isfinite(data.flow[0, year == 2000]).all()
    periods = {"train": parse_period(["2000-03-01", "2000-12-31"], "train_period"),
               "test": parse_period(["2001-01-01", "2001-12-31"], "test_period")}
    with pytest.raises(ValueError,
                       match=r"\['01022500'\] have no observed flow in the test period 2001-01-01..2001-12-31"):
        check_periods(data, periods, 30, 1)


def test_a_missing_basin_and_a_period_outside_the_data_are_named():
    with pytest.raises(FileNotFoundError, match=r"basin '09999999'.*basins with files there: \['01022500'"):
        _read(basins=["09999999"])
    data = _read()
    with pytest.raises(ValueError, match=r"test_period 2002-06-01..2003-06-30 lies outside the data.*2002-12-31"):
        check_periods(data, {"test": parse_period(["2002-06-01", "2003-06-30"], "test_period")}, 30, 1)


def test_synthetic_basins_are_seeded_and_warm_at_the_documented_rate():
    a, b = (synthetic_basins(20, 1980, 2009, warming=0.05, seed=1) for _ in range(2))
    np.testing.assert_array_equal(a.flow, b.flow)
    years = a.dates.astype("datetime64[Y]").astype(int) + 1970
    temp = a.drivers[..., 1:3].mean(-1)
    trend = np.polyfit(years, temp.mean(0), 1)[0]
    assert trend == pytest.approx(0.05, abs=0.015)
    assert (a.flow >= 0).all() and a.flow.mean() < a.drivers[..., 0].mean()  # runoff ratio below one
    assert a.truth["melt"][a.static[:, 0] > 45].mean() > a.truth["melt"][a.static[:, 0] < 33].mean()


def test_the_noise_driver_never_reaches_the_flow():
    data = synthetic_basins(4, 1990, 1991, seed=2)
    drivers = data.drivers.astype(np.float64)
    shuffled = drivers.copy()
    shuffled[..., DRIVERS.index("noise")] = np.random.default_rng(0).normal(size=drivers.shape[:2])
    np.testing.assert_array_equal(runoff(data.static, drivers)["flow"], runoff(data.static, shuffled)["flow"])


def test_windows_normalise_with_training_basins_and_days_only_and_shard_like_one_process():
    data = synthetic_basins(6, 1990, 1992, seed=3)
    train = slice(0, 365)
    w = Windows(data, seq_len=10, horizon=3, past_flow=True, forecast_error=0.2, train_basins=np.arange(4),
                train_days=train, seed=0)
    np.testing.assert_allclose(w.x[:4, train].reshape(-1, len(DRIVERS)).mean(0), 0, atol=1e-4)
    b, t0 = w.samples(np.arange(4), 30, 364, require_target=True)
    assert t0.min() == 29 and t0.max() + 3 == 364
    batch = w.batch(b[:5], t0[:5])
    assert batch.x_past.shape == (5, 10, 6) and batch.x_future.shape == (5, 3, 6) and batch.y.shape == (5, 3)
    np.testing.assert_allclose(batch.y[0].numpy(), w.q[b[0], t0[0] + 1:t0[0] + 4])
    noise = w.forecast_noise(b, t0)
    assert noise[:, 0].std() == pytest.approx(0.2, rel=0.1)
    assert noise[:, 2].std() == pytest.approx(0.2 * 3 ** 0.5, rel=0.1)
    one = next(iter(WindowBatches(w, b, t0, 8, seed=0, rank=0, world_size=1)))
    two = [next(iter(WindowBatches(w, b, t0, 4, seed=0, rank=r, world_size=2))) for r in range(2)]
    torch.testing.assert_close(torch.cat([two[0].x_past, two[1].x_past]), one.x_past)


def test_the_365_day_config_loads_and_its_first_training_window_fits_in_the_record():
    """lstm_365.yaml (NeuralHydrology's sequence length): 1980 is the spin-up of the 1981 training start;
    the first window starts inside the record (no wrap-around index), one more day fails with a clear error."""
    from orbit.config import load_config
    from orbit.plugins.streamflow.task import StreamflowTask

    config = Path(__file__).resolve().parents[2] / "configs/plugins/streamflow/lstm_365.yaml"
    task = StreamflowTask(load_config(config, ["data.n_basins=2"]))
    b, t0 = task.train_samples
    assert task.cfg.data.seq_len == 365 and t0.min() - 364 >= 0
    assert str(task.data.dates[t0.min() + 1]) == "1981-01-01"
    assert task.windows.batch(b[:3], t0[:3]).x_past.shape == (3, 365, len(DRIVERS))
    with pytest.raises(ValueError, match="seq_len=367"):
        StreamflowTask(load_config(config, ["data.n_basins=2", "data.seq_len=367"]))
