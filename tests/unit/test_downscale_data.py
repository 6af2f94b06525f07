"""The downscaling pairs: coarse == block mean of fine, surface physics with known signs, the store."""
import numpy as np
import pytest
import xarray as xr

from orbit.synthetic import fine_scale as downscale
from orbit.synthetic import toy_earth as synth
from orbit.data.downscale_dataset import DownscaleDataset, DownscaleLoader


@pytest.fixture(scope="module")
def pairs():
    return downscale.generate("reanalysis", years=(1990, 1990), coarse_grid=(16, 32), scale=4, step_hours=24)


@pytest.fixture(scope="module")
def store_path(pairs, tmp_path_factory):
    return downscale.write(pairs, tmp_path_factory.mktemp("ds") / "pairs.zarr", train_years=(1990, 1990))


def test_block_mean_known_answer():
    x = np.arange(16, dtype=np.float64).reshape(1, 4, 4)
    np.testing.assert_array_equal(downscale.block_mean(x, 2)[0], [[2.5, 4.5], [10.5, 12.5]])
    with pytest.raises(ValueError, match="not divisible"):
        downscale.block_mean(np.zeros((5, 4)), 2)


def test_grids_and_coordinates(pairs):
    assert downscale.fine_grid((16, 32), 4) == (64, 128)
    with pytest.raises(ValueError, match="scale must be"):
        downscale.fine_grid((16, 32), 1)
    assert pairs["t2m"].shape == (365, 64, 128) and pairs["t2m_coarse"].shape == (365, 16, 32)
    # lat nests exactly in the toy Earth's coarse grid; coarse coords are block centres
    np.testing.assert_allclose(pairs["lat_coarse"], synth.grid_coords((16, 32))[0], atol=1e-4)
    np.testing.assert_allclose(pairs["lon_coarse"], pairs["lon"].values.reshape(-1, 4).mean(1), atol=1e-4)
    assert pairs["lat"].attrs["units"] == "degrees_north" and pairs["tp"].attrs["units"] == "mm"


def test_coarse_is_block_mean_of_fine(pairs):
    for name in downscale.CHANNELS:
        np.testing.assert_allclose(pairs[f"{name}_coarse"].values, downscale.block_mean(pairs[name].values, 4),
                                   rtol=1e-6, atol=1e-6 * float(np.abs(pairs[name]).max()))
    assert float(pairs["tp"].min()) >= 0.0


def _fine_anomaly(x: np.ndarray) -> np.ndarray:
    """x minus its block mean repeated on the fine grid: the part a coarse grid cannot hold."""
    return x - downscale.block_mean(x, 4).repeat(4, -2).repeat(4, -1)


def test_t2m_fine_structure_follows_orography(pairs):
    t2m = _fine_anomaly(pairs["t2m"].values.astype(np.float64)).mean(axis=0)
    height = _fine_anomaly(pairs["orography"].values.astype(np.float64)[None])[0]
    assert np.corrcoef(t2m.ravel(), height.ravel())[0, 1] < -0.8  # higher -> colder (lapse rate)


def test_precipitation_enhanced_upslope_and_wind_blocked():
    earth = synth.ToyEarth(synth.SOURCES["reanalysis"], (64, 128))
    shape = (1, 64, 128)
    u850, v850 = np.full(shape, 10.0), np.full(shape, 5.0)
    out = downscale.surface_fields(earth, np.array(["1990-07-01"], "datetime64[ns]"), np.full(shape, 280.0),
                                   u850, v850, np.ones(shape))
    upslope = u850[0] * earth.dhdx + v850[0] * earth.dhdy
    assert out["tp"][0][upslope > 0.02].min() > 1.5 and out["tp"][0][upslope < -0.02].max() < 0.7
    np.testing.assert_allclose(out["tp"][0][np.abs(upslope) < 1e-9], 1.0)
    # blocking: undo friction and turning, then the cross-contour wind is cut by G^2 / (|g|^2 + G^2)
    # and the along-contour wind is untouched
    k, c, s = earth.wind_factor, earth.turn_cos, earth.turn_sin
    ub = (c * out["u10"][0] + s * out["v10"][0]) / k
    vb = (-s * out["u10"][0] + c * out["v10"][0]) / k
    gx, gy, g2 = earth.dhdx, earth.dhdy, earth.dhdx**2 + earth.dhdy**2
    G2 = downscale.BLOCKING_SLOPE**2
    np.testing.assert_allclose(ub * gx + vb * gy, upslope * G2 / (g2 + G2), atol=1e-9)
    np.testing.assert_allclose(-ub * gy + vb * gx, -u850[0] * gy + v850[0] * gx, atol=1e-9)
    assert (g2 > G2).any()  # some slopes are steep enough to block most of the cross-contour wind


def test_training_space_round_trip():
    tp = np.array([0.0, 0.1, 5.0, 80.0])
    np.testing.assert_allclose(downscale.to_physical("tp", downscale.to_training_space("tp", tp)), tp, rtol=1e-12)
    np.testing.assert_array_equal(downscale.to_training_space("t2m", tp), tp)


def test_store_round_trip_and_statistics(pairs, store_path):
    assert (store_path / ".zmetadata").is_file()  # zarr v2, consolidated
    ds = downscale.open_pairs(store_path)
    xr.testing.assert_allclose(ds["t2m"].load(), pairs["t2m"])
    mean = float(ds["norm_mean"].sel(channel="tp"))
    assert mean == pytest.approx(float(np.log1p(pairs["tp"].values.astype(np.float64)).mean()), rel=1e-5)
    assert ds.attrs["scale"] == 4 and ds.attrs["train_years"] == "1990-1990"
    with pytest.raises(FileExistsError, match="overwrite"):
        downscale.write(pairs, store_path, train_years=(1990, 1990))
    with pytest.raises(FileNotFoundError, match="orbit data downscale"):
        downscale.open_pairs(store_path.parent / "missing.zarr")


def test_dataset_normalizes_and_loader_resumes(store_path):
    data = DownscaleDataset(store_path, ["t2m", "tp"], [1990, 1990], fraction=0.5)
    assert len(data) == 183 and data.coarse.shape == (183, 2, 16, 32) and data.fine.shape == (183, 2, 64, 128)
    assert data.statics.shape == (2, 64, 128)
    physical = data.to_physical(data.batch([0, 1]).fine)
    raw = downscale.open_pairs(store_path)["tp"].isel(time=[0, 1]).values
    np.testing.assert_allclose(physical[:, 1].numpy(), raw, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="subset of the downscaling channels"):
        DownscaleDataset(store_path, ["q850"], [1990, 1990])
    loader = DownscaleLoader(data, batch_size=4, seed=3)
    stream = iter(loader)
    for _ in range(50):  # crosses an epoch (45 batches)
        next(stream)
    state = loader.state_dict()
    expected = next(stream).index
    resumed = DownscaleLoader(data, batch_size=4)
    resumed.load_state_dict(state)
    assert resumed.state_dict()["epoch"] == 1
    np.testing.assert_array_equal(next(iter(resumed)).index, expected)
