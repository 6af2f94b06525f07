"""Streamflow basins on the toy Earth (toy_basins.py) and the RS-LSTM grid-encoder family: the drivers
are the toy Earth's own fields at the basin's cell (known answer, documented conversions), the patch
is centred on that cell, rs_lstm trains end to end through the CLI, and bad input fails before
training, naming the value."""
import json
import re

import numpy as np
import pytest
import torch

from orbit.cli import main
from orbit.plugins.streamflow.models import RSLSTM, Sizes
from orbit.plugins.streamflow.synthetic import DRIVERS, runoff
from orbit.plugins.streamflow.toy_basins import P_850, PRCP_SCALE, toy_earth_basins
from orbit.synthetic import toy_earth

RS = "configs/plugins/streamflow/rs_lstm.yaml"
TINY = ["data.n_basins=6", "data.first_year=2000", "data.last_year=2001", "data.train_period=[2000-03-01,2000-12-31]",
        "data.val_period=[2001-01-01,2001-06-30]", "data.test_period=[2001-07-01,2001-12-31]", "data.seq_len=20",
        "model.hidden=8", "model.embed=4", "train.max_steps=30", "train.log_every=10", "train.ckpt_every=30",
        "train.eval_every=30", "train.warmup_steps=2", "data.batch_size=32"]


@pytest.fixture(scope="module")
def basins():
    return toy_earth_basins(5, 2000, 2000, warming=0.0, seed=0, patch=3)


def test_drivers_are_the_toy_earth_fields_at_the_basin_cell(basins):
    fields, statics = toy_earth.generate("reanalysis", (1999, 2000), (16, 32), 0)
    year = fields.sel(time=slice("2000-01-01", "2000-12-31T18:00"))
    assert basins.drivers.shape == (5, 366, len(DRIVERS) + 2 * 9) and basins.flow.shape == (5, 366)
    assert str(basins.dates[0]) == "2000-01-01" and str(basins.dates[-1]) == "2000-12-31"
    lat, _ = toy_earth.grid_coords((16, 32))
    for b, (i, j) in enumerate(basins.truth["cell"]):
        assert statics.land_sea_mask.values[i, j] == 1 and abs(lat[i]) <= 65
        assert basins.static[b, 0] == pytest.approx(lat[i])
        assert basins.static[b, 1] == pytest.approx(statics.orography.values[i, j] / 1000, rel=1e-6)
        tp = year.tp.values[:, i, j].reshape(366, 4)
        t2m = year.t2m.values[:, i, j].reshape(366, 4).astype(np.float64) - 273.15
        q = year.q.sel(level=850).values[:, i, j].reshape(366, 4).astype(np.float64)
        x = basins.drivers[b]
        np.testing.assert_allclose(x[:, 0], PRCP_SCALE * tp.sum(1), rtol=1e-5, atol=1e-5)  # mm/day
        np.testing.assert_allclose(x[:, 1], t2m.max(1), atol=1e-4)                          # degC
        np.testing.assert_allclose(x[:, 2], t2m.min(1), atol=1e-4)
        np.testing.assert_allclose(x[:, 4], (q * P_850 / (0.622 + 0.378 * q)).mean(1), rtol=1e-5)  # Pa
        assert (x[:, 3] > 0).all() and (x[:, 3] < 500).all()                                 # W/m^2
        centre = basins.driver_names.index("patch_prcp_1_1"), basins.driver_names.index("patch_t2m_1_1")
        np.testing.assert_allclose(x[:, centre[0]], x[:, 0], rtol=1e-6)
        np.testing.assert_allclose(x[:, centre[1]], t2m.mean(1), atol=1e-4)
        east = basins.driver_names.index("patch_prcp_1_2")
        np.testing.assert_allclose(x[:, east], PRCP_SCALE * year.tp.values[:, i, (j + 1) % 32].reshape(366, 4).sum(1),
                                   rtol=1e-5, atol=1e-5)
    assert len({tuple(c) for c in basins.truth["cell"]}) == 5  # distinct cells
    assert (basins.flow >= 0).all() and np.isfinite(basins.flow).all()


def test_flow_is_the_conceptual_model_of_those_drivers(basins):
    clean = runoff(basins.static.astype(np.float64), basins.drivers[..., :4].astype(np.float64))["flow"]
    ratio = basins.flow[:, 30:] / np.maximum(clean[:, 30:], 1e-9)
    # the generator spins up a year before; after a month the stores have forgotten the start, and the
    # observations are the model's flow times 5% log-normal noise
    assert np.median(np.abs(np.log(ratio[clean[:, 30:] > 0.05]))) < 0.1


def test_rs_lstm_sees_the_patch_and_only_the_patch_columns_go_to_the_cnn():
    sizes = Sizes(drivers=6 + 2 * 9, static=3, seq_len=8, horizon=1, patch=3, patch_channels=2)
    torch.manual_seed(0)
    model = RSLSTM(sizes, hidden=8, embed=4).eval()
    x_past, x_future = torch.randn(2, 8, 24), torch.randn(2, 1, 24)
    q, s = torch.zeros(2, 8, 1), torch.randn(2, 3)
    changed = x_past.clone()
    changed[:, -1, -18:] += 1.0
    assert model(x_past, x_future, q, s).shape == (2, 1)
    assert not torch.allclose(model(x_past, x_future, q, s), model(changed, x_future, q, s))
    with pytest.raises(ValueError, match="rs_lstm needs a gridded patch"):
        RSLSTM(Sizes(drivers=6, static=3, seq_len=8, horizon=1), hidden=8)


def test_rs_lstm_trains_through_the_cli_on_toy_earth_basins(tmp_path):
    run = tmp_path / "rs"
    assert main(["train", "--config", RS, "--run-dir", str(run), *TINY]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["median"]["test"]) == {"rs_lstm", "climatology", "persistence"}
    assert len(summary["per_basin"]["test"]["rs_lstm"]) == 6 and np.isfinite(summary["scalars"]["test_nse"])
    assert summary["protocol"]["basins"]["test"][0] == "t0000"


@pytest.mark.parametrize("override, message", [
    ("data.patch=2", r"data.patch=2 is not valid: use 0 \(no patch\) or an odd size k <= 16"),
    ("data.patch=17", r"data.patch=17 is not valid"),
    ("data.weather=era5", r"weather='era5' is not valid; use one of \['stochastic', 'toy_earth'\]"),
    ("data.weather=stochastic", r"data.patch=3 needs gridded fields"),
    ("data.patch=0", r"family='rs_lstm' with data.patch=0"),
    ("data.n_basins=500", r"data.n_basins=500: the toy Earth grid \(16, 32\) has only 91 land cells"),
    ("data.toy_grid=[16,16]", r"grid must be \(H, 2H\)"),
])
def test_bad_input_is_refused_before_training(tmp_path, capsys, override, message):
    run = tmp_path / "bad"
    assert main(["train", "--config", RS, "--run-dir", str(run), *TINY, override]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not run.exists()
