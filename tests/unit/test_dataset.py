"""ForecastDataset on tiny hand-made stores whose values encode (channel, time index)."""
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
import zarr

from orbit.data import store, writer
from orbit.data.dataset import ForecastDataset

H, W = 8, 16
LEVELS = (500, 850)


def write_toy_store(path, *, source="era5", two_d=("t2m", "u10"), three_d=("z",), start="2000-11-01",
                    end="2001-02-28T18", freq="6h", lat=None, drop_steps=()):
    """A store where channel k at time index i and grid point (h, w) holds 1000 (k + 1) + i + h + w / 100.

    Channels are numbered in the store's canonical order, so a test recovers which channel and
    which time step a value came from.
    """
    times = pd.date_range(start, end, freq=freq).delete(list(drop_steps)).values.astype("datetime64[ns]")
    lat = np.linspace(-78.75, 78.75, H) if lat is None else lat
    lon = np.arange(W) * 360.0 / W
    grid = np.arange(H)[:, None] + np.arange(W)[None, :] / 100.0
    step = np.arange(times.size, dtype=np.float64)[:, None, None]
    fields, k = {}, 0
    for name in two_d:
        fields[name] = (("time", "lat", "lon"), (1000.0 * (k + 1) + step + grid).astype(np.float32))
        k += 1
    for name in three_d:
        levels = [1000.0 * (k + j + 1) + step + grid for j in range(len(LEVELS))]
        fields[name] = (("time", "level", "lat", "lon"), np.stack(levels, axis=1).astype(np.float32))
        k += len(LEVELS)
    ds = xr.Dataset(fields, coords={"time": times, "lat": lat, "lon": lon, "level": list(LEVELS)})
    return writer.write_store(ds, path, source=source, kind="reanalysis", train_years=(2000, 2000))


def raw_value(store_ds, channel, time_index):
    """The toy value of `channel` at grid point (0, 0)."""
    return 1000.0 * (store.channel_names(store_ds).index(channel) + 1) + time_index


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    write_toy_store(root / "era5.zarr", source="era5")
    write_toy_store(root / "cmip.zarr", source="cmip", two_d=("t2m",))
    return {"era5": root / "era5.zarr", "cmip": root / "cmip.zarr"}


CHANNELS = ["z500", "t2m", "u10", "z850"]  # global order differs from the stores' order on purpose


def physical(sample, field):
    return field * sample.std[:, None, None] + sample.mean[:, None, None]


@pytest.mark.parametrize("in_memory", [True, False])
def test_sample_pairs_init_and_target_with_source_normalization(stores, in_memory):
    ds = ForecastDataset(stores, CHANNELS, years=[2001], lead_hours=[6, 24], in_memory=in_memory)
    era5 = store.open_store(stores["era5"])
    source_index, t = ds.locate(10)
    sample = ds[(10, 24)]
    assert (ds.sources[source_index], sample.source_index, sample.lead_hours) == ("era5", 0, 24.0)
    assert sample.time == era5["time"].values[t].astype(np.int64)
    expected_x = [raw_value(era5, c, t) for c in CHANNELS]
    expected_y = [raw_value(era5, c, t + 4) for c in CHANNELS]
    np.testing.assert_allclose(physical(sample, sample.x)[:, 0, 0], expected_x, atol=1e-2)
    np.testing.assert_allclose(physical(sample, sample.y)[:, 0, 0], expected_y, atol=1e-2)
    norm = era5[["norm_mean", "norm_std"]].sel(channel=CHANNELS)
    np.testing.assert_allclose(sample.mean, norm["norm_mean"].values)
    np.testing.assert_allclose(sample.std, norm["norm_std"].values)
    assert abs(sample.x.mean()) < 10  # normalized, not raw values in the thousands


def test_valid_init_times_keep_the_max_lead_inside_the_selected_years(stores):
    ds = ForecastDataset(stores, CHANNELS, years=[2001], lead_hours=[6, 24])
    steps_2001 = 59 * 4  # Jan 1 .. Feb 28, 6-hourly
    assert len(ds) == 2 * (steps_2001 - 4)
    times = ds.init_times()
    assert times.min() == np.datetime64("2001-01-01T00")
    assert times[: len(ds) // 2].max() == np.datetime64("2001-02-28T18") - np.timedelta64(24, "h")
    # the last Dec 2000 step may not start a forecast whose target is in 2001 when only 2000 is used
    ds_2000 = ForecastDataset(stores, CHANNELS, years=[2000], lead_hours=[24])
    assert ds_2000.init_times().max() == np.datetime64("2000-12-30T18")


def test_init_times_do_not_straddle_a_gap(tmp_path):
    path = tmp_path / "gappy.zarr"
    gappy = write_toy_store(path, drop_steps=[300])  # one missing 6-h step in January 2001
    gap_time = pd.date_range("2000-11-01", "2001-02-28T18", freq="6h").values.astype("datetime64[ns]")[300]
    ds = ForecastDataset({"gappy": path}, ["t2m"], years=[2000, 2001], lead_hours=[12])
    inits = ds.init_times()
    assert len(ds) == gappy.sizes["time"] - 2 - 2  # 2 at the end, 2 just before the gap
    assert not np.any((inits < gap_time) & (inits + np.timedelta64(12, "h") > gap_time))
    sample = ds[int(np.searchsorted(inits, gap_time))]  # first init after the gap
    assert sample.time == (gap_time + np.timedelta64(6, "h")).astype(np.int64)


def test_absent_channels_are_zero_masked_and_unit_normalized(stores):
    ds = ForecastDataset(stores, CHANNELS, years=[2001], lead_hours=[6])
    sample = ds[len(ds) - 1]
    assert ds.sources[sample.source_index] == "cmip"
    absent = CHANNELS.index("u10")
    assert sample.mask.tolist() == [True, True, False, True]
    assert not sample.x[absent].any() and not sample.y[absent].any()
    assert (sample.mean[absent], sample.std[absent]) == (0.0, 1.0)
    assert ds.source_channels() == {"era5": CHANNELS, "cmip": ["z500", "t2m", "z850"]}


def test_collate_builds_a_typed_batch(stores):
    ds = ForecastDataset(stores, CHANNELS, years=[2001], lead_hours=[6, 24])
    samples = [ds[(0, 6)], ds[(len(ds) - 1, 24)]]
    batch = ds.collate(samples)
    assert len(batch) == 2 and batch.channels == tuple(CHANNELS) and batch.sources == ("era5", "cmip")
    assert batch.x.shape == (2, 4, H, W) and batch.x.dtype == torch.float32
    assert batch.mask.dtype == torch.bool and batch.mask[1].tolist() == [True, True, False, True]
    assert batch.lead_hours.tolist() == [6.0, 24.0] and batch.source_index.tolist() == [0, 1]
    assert batch.time.dtype == torch.int64 and batch.time[0].item() == samples[0].time
    torch.testing.assert_close(batch.lat, torch.from_numpy(ds.lat))
    torch.testing.assert_close(batch.denormalize(batch.y)[0].numpy(), physical(samples[0], samples[0].y))
    moved = batch.to("cpu")
    assert moved is not batch and torch.equal(moved.y, batch.y) and moved.channels == batch.channels


def test_lazy_dataset_pickles_and_reopens_its_stores(stores):
    ds = ForecastDataset(stores, CHANNELS, years=[2001], lead_hours=[6], in_memory=False)
    clone = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(clone[5].y, ds[5].y)


def test_time_step_and_grid_accessors(stores):
    ds = ForecastDataset(stores, CHANNELS, years=[2001], lead_hours=[6])
    assert ds.time_step_hours() == 6.0 and ds.time_step_hours("cmip") == 6.0
    assert ds.lat.shape == (H,) and ds.lon.shape == (W,) and ds.sources == ("era5", "cmip")


def test_climatology_comes_from_each_samples_own_store(stores):
    ds = ForecastDataset(stores, CHANNELS, years=[2001], lead_hours=[6])
    times = np.array(["2001-01-05T06", "2001-02-01T12"], dtype="datetime64[ns]")
    clim = ds.climatology(["u10", "t2m"], times, np.array([0, 1]))
    era5, cmip = store.open_store(stores["era5"]), store.open_store(stores["cmip"])
    np.testing.assert_allclose(clim[0], store.climatology(era5, ["u10", "t2m"], times[:1])[0])
    np.testing.assert_allclose(clim[1, 1], store.climatology(cmip, ["t2m"], times[1:])[0, 0])
    assert not clim[1, 0].any()  # cmip has no u10

    batch = ds.collate([ds[(3, 6)], ds[(len(ds) - 2, 6)]])
    normalized = ds.target_climatology(batch)
    valid = batch.time.numpy() + 6 * 3600 * 10**9
    physical_clim = ds.climatology(CHANNELS, valid, batch.source_index.numpy())
    torch.testing.assert_close(batch.denormalize(normalized) * batch.mask[..., None, None],
                               torch.from_numpy(physical_clim))


def test_channel_in_no_store_names_it_and_lists_the_stores(stores):
    with pytest.raises(ValueError, match=r"\['q850'\] are in no store.*'era5': \['t2m', 'u10', 'z500', 'z850'\]"):
        ForecastDataset(stores, ["t2m", "q850"], years=[2001], lead_hours=[6])


def test_grid_mismatch_shows_each_grid(stores, tmp_path):
    write_toy_store(tmp_path / "shifted.zarr", lat=np.linspace(-80.0, 80.0, H))
    with pytest.raises(ValueError, match=r"share one lat/lon grid.*'era5': '8x16 \(lat -78.750.*'other': '8x16 \(lat -80.000"):
        ForecastDataset({"era5": stores["era5"], "other": tmp_path / "shifted.zarr"}, ["t2m"], [2001], [6])


def test_years_outside_the_store_show_its_years(stores):
    with pytest.raises(ValueError, match=r"\[2005\] are outside store 'era5', which holds years 2000-2001"):
        ForecastDataset(stores, ["t2m"], years=[2001, 2005], lead_hours=[6])


def test_years_per_source(stores):
    ds = ForecastDataset(stores, ["t2m"], years={"era5": [2000], "cmip": [2001]}, lead_hours=[6])
    sources = [ds.locate(i)[0] for i in range(len(ds))]
    assert ds.init_times()[np.array(sources) == 0].max() < np.datetime64("2001-01-01")
    assert ds.init_times()[np.array(sources) == 1].min() >= np.datetime64("2001-01-01")
    with pytest.raises(ValueError, match=r"lack source\(s\) \['cmip'\]"):
        ForecastDataset(stores, ["t2m"], years={"era5": [2000]}, lead_hours=[6])


def test_empty_selection_is_an_error(stores):
    with pytest.raises(ValueError, match="no valid init time: with max lead 2400 h"):
        ForecastDataset(stores, ["t2m"], years=[2001], lead_hours=[2400])


def test_lead_must_be_a_multiple_of_the_time_step(stores):
    with pytest.raises(ValueError, match=r"lead 9 h is not a multiple of store 'era5' time step 6 h"):
        ForecastDataset(stores, ["t2m"], years=[2001], lead_hours=[6, 9])


def test_unknown_lead_or_bare_index_with_several_leads(stores):
    ds = ForecastDataset(stores, ["t2m"], years=[2001], lead_hours=[6, 12])
    with pytest.raises(ValueError, match=r"lead 18 h is not one of this dataset's leads \(6.0, 12.0\)"):
        ds[(0, 18)]
    with pytest.raises(TypeError, match="index with"):
        ds[0]
    with pytest.raises(IndexError, match="out of range"):
        ds[(len(ds), 6)]


def corrupt(path, variable, index):
    zarr.open_group(str(path), mode="r+", zarr_format=2)[variable][index] = np.nan


def test_nan_in_selected_years_is_reported_on_load(tmp_path):
    path = tmp_path / "bad.zarr"
    write_toy_store(path)
    corrupt(path, "z", (300, 1, 0, slice(0, 3)))  # three NaNs in z850, January 2001
    with pytest.raises(ValueError, match=r"source 'bad' has NaN/Inf .*\{'z850': 3\}"):
        ForecastDataset({"bad": path}, ["t2m", "z850"], years=[2001], lead_hours=[6], in_memory=True)
    # outside the selected years the NaN is not read
    ForecastDataset({"bad": path}, ["t2m", "z850"], years=[2000], lead_hours=[6], in_memory=True)


def test_nan_is_reported_per_sample_when_lazy(tmp_path):
    path = tmp_path / "bad.zarr"
    write_toy_store(path)
    corrupt(path, "t2m", (300, 0, 0))
    ds = ForecastDataset({"bad": path}, ["t2m"], years=[2001], lead_hours=[6], in_memory=False)
    first = int(np.searchsorted(ds.init_times(), store.open_store(path)["time"].values[300]))
    ds[first - 2]  # does not touch step 300
    with pytest.raises(ValueError, match=r"'bad' has NaN/Inf values at init 2001-01-14T18:00 or target 2001-01-15T00:00.*\{'t2m': 1\}"):
        ds[first - 1]  # target is step 300
