"""Tests for orbit.data.store: layout validation, statistics on training years, climatology, atomic writes."""
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from orbit.data import store, writer

H, W = 4, 8
LAT = np.linspace(-67.5, 67.5, H)
LON = np.arange(W) * 360.0 / W


def six_hourly(start: str, end: str) -> np.ndarray:
    return pd.date_range(start, end, freq="6h").values


def make_fields(times: np.ndarray, seed: int = 0) -> xr.Dataset:
    """2-D u10, t2m (deliberately not alphabetical) and 3-D z, t on two levels."""
    rng = np.random.default_rng(seed)
    T = len(times)

    def field(*shape):
        return rng.normal(size=(T, *shape, H, W)).astype(np.float32)

    return xr.Dataset(
        {
            "u10": (("time", "lat", "lon"), field()),
            "t2m": (("time", "lat", "lon"), 280 + field()),
            "z": (("time", "level", "lat", "lon"), 5e4 + field(2)),
            "t": (("time", "level", "lat", "lon"), 250 + field(2)),
        },
        coords={"time": times, "lat": LAT, "lon": LON, "level": [500, 850]},
    )


def make_statics() -> xr.Dataset:
    oro = np.arange(H * W, dtype=np.float32).reshape(H, W)
    return xr.Dataset(
        {"orography": (("lat", "lon"), oro), "land_sea_mask": (("lat", "lon"), (oro > 10).astype(np.float32))},
        coords={"lat": LAT, "lon": LON},
    )


def write(ds, tmp_path, name="s.zarr", **kw):
    kw = {"source": "toy", "kind": "model", "train_years": (2000, 2000), **kw}
    return writer.write_store(ds, tmp_path / name, **kw)


def test_round_trip_keeps_values_layout_and_channel_order(tmp_path):
    ds = make_fields(six_hourly("2000-01-01", "2000-03-01"))
    out = write(ds, tmp_path, statics=make_statics(), attrs={"institution": "ORNL"})

    assert store.channel_names(out) == ["u10", "t2m", "z500", "z850", "t500", "t850"]
    np.testing.assert_array_equal(out["t"].values, ds["t"].values)
    np.testing.assert_array_equal(out["orography"].values, make_statics()["orography"].values)
    np.testing.assert_array_equal(out["latitude_2d"].values, np.broadcast_to(LAT[:, None], (H, W)))
    assert out["lat"].dtype == np.float32 and out["lon"].dtype == np.float32
    assert out["level"].dtype == np.int32 and out["time"].dtype == "datetime64[ns]"
    assert out["t2m"].attrs["units"] == "K" and out["z"].attrs["standard_name"] == "geopotential"
    assert out.attrs["institution"] == "ORNL" and out.attrs["grid"] == f"{H}x{W}"
    assert out.attrs["orbit_store_version"] == 1 and out.attrs["train_years"] == "2000-2000"
    assert out["norm_mean"].attrs["stats_years"] == "2000-2000"


def test_channel_array_reads_channels_by_name(tmp_path):
    ds = make_fields(six_hourly("2000-01-01", "2000-01-10"))
    out = write(ds, tmp_path)
    arr = store.channel_array(out, ["t850", "u10"], slice(2, 5))
    assert arr.shape == (3, 2, H, W) and arr.dtype == np.float32
    np.testing.assert_array_equal(arr[:, 0], ds["t"].isel(time=slice(2, 5), level=1).values)
    np.testing.assert_array_equal(arr[:, 1], ds["u10"].isel(time=slice(2, 5)).values)
    assert store.channel_array(out, ["z500"], 7).shape == (1, 1, H, W)
    for index in ([3, 4, 5], np.array([5, 1, 8]), -1):
        expected = ds["z"].sel(level=500).values[np.atleast_1d(index)]
        np.testing.assert_array_equal(store.channel_array(out, ["z500"], index)[:, 0], expected)
    with pytest.raises(ValueError, match=r"unknown channel\(s\) \['q850'\]"):
        store.channel_array(out, ["q850"], 0)


def test_norm_stats_use_training_years_only(tmp_path):
    times = six_hourly("2000-01-01", "2001-12-31 18:00")
    in_train = times < np.datetime64("2001-01-01")
    ds = make_fields(times)
    # Training year alternates 0, 2 (mean 1, std 1); the other year is far off and must be ignored.
    alternating = np.where(np.arange(len(times)) % 2 == 0, 0.0, 2.0)
    value = np.where(in_train, alternating, 1000.0).astype(np.float32)
    ds["t2m"][:] = value[:, None, None]
    ds["u10"][:] = np.float32(3.0)
    out = write(ds, tmp_path, train_years=(2000, 2000))
    mean = out["norm_mean"].to_series()
    std = out["norm_std"].to_series()
    assert mean["t2m"] == pytest.approx(1.0) and std["t2m"] == pytest.approx(1.0)
    assert mean["u10"] == pytest.approx(3.0) and std["u10"] == pytest.approx(store.STD_FLOOR)


def test_climatology_recovers_annual_and_diurnal_sinusoid(tmp_path):
    times = six_hourly("2000-01-01", "2002-12-31 18:00")
    ds = make_fields(times)
    basis = store.design_matrix(times)
    cols = {name: basis[:, i] for i, name in enumerate(store.HARMONICS)}
    amplitude = np.linspace(1, 2, H * W).reshape(H, W)
    signal = 280 + 10 * cols["cos_y1"] - 3 * cols["sin_y2"] + 2 * cols["cos_d1"] + 1.5 * cols["sin_y1_sin_d1"]
    ds["t2m"][:] = (signal[:, None, None] * amplitude).astype(np.float32)
    out = write(ds, tmp_path, train_years=(2000, 2001))

    # Evaluate at held-out times, hourly, in another year: the fit is a smooth function of time.
    eval_times = pd.date_range("2005-03-01", periods=48, freq="1h").values
    ebasis = store.design_matrix(eval_times)
    ecols = {name: ebasis[:, i] for i, name in enumerate(store.HARMONICS)}
    expected = (280 + 10 * ecols["cos_y1"] - 3 * ecols["sin_y2"] + 2 * ecols["cos_d1"]
                + 1.5 * ecols["sin_y1_sin_d1"])[:, None, None] * amplitude
    clim = store.climatology(out, ["t2m"], eval_times)
    assert clim.shape == (48, 1, H, W) and clim.dtype == np.float32
    np.testing.assert_allclose(clim[:, 0], expected, rtol=1e-5)


def test_design_matrix_uses_day_of_year_and_hour():
    basis = store.design_matrix(np.array(["2001-01-01T00", "2001-07-02T12"], dtype="datetime64[ns]"))
    assert basis.shape == (2, 15)
    cols = dict(zip(store.HARMONICS, basis.T))
    np.testing.assert_allclose(cols["cos_y1"], [1.0, np.cos(2 * np.pi * 182.5 / 365.25)])
    np.testing.assert_allclose(cols["cos_d1"], [1.0, -1.0])
    np.testing.assert_allclose(cols["sin_y1_cos_d1"], cols["sin_y1"] * cols["cos_d1"])


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda ds: ds.assign(t2m=ds.t2m.where(ds.time != ds.time[0])), r"variable 't2m' has 32 NaN/Inf"),
        (lambda ds: ds.isel(lat=slice(None, None, -1)), r"'lat' must be strictly ascending"),
        (lambda ds: ds.assign_coords(lon=ds.lon - 180), r"'lon' must lie in \[0, 360\)"),
        (lambda ds: ds.assign(u10=ds.u10.astype(np.float64)), r"variable 'u10' has dtype float64"),
        (lambda ds: ds.assign(u10=ds.u10.transpose("time", "lon", "lat")), r"variable 'u10' has dims"),
        (lambda ds: ds.assign(orog=ds.u10.isel(time=0)), r"variable 'orog' has dims \('lat', 'lon'\)"),
        (lambda ds: ds.isel(time=slice(None, None, -1)), r"'time' must be non-empty and strictly increasing"),
    ],
)
def test_invalid_layouts_are_rejected_with_the_culprit_named(tmp_path, corrupt, message):
    ds = corrupt(make_fields(six_hourly("2000-01-01", "2000-01-10")))
    with pytest.raises(ValueError, match=message):
        write(ds, tmp_path)
    assert not any(tmp_path.iterdir())


def test_invalid_arguments_are_rejected(tmp_path):
    ds = make_fields(six_hourly("2000-01-01", "2000-01-10"))
    with pytest.raises(ValueError, match="kind must be one of"):
        write(ds, tmp_path, kind="cmip")
    with pytest.raises(ValueError, match=r"train_years \(1990, 1991\) select 0 time steps"):
        write(ds, tmp_path, train_years=(1990, 1991))
    bad_statics = make_statics().rename(orography="height")
    with pytest.raises(ValueError, match=r"unknown static field 'height'"):
        write(ds, tmp_path, statics=bad_statics)


def test_existing_target_is_kept_unless_overwrite(tmp_path):
    first = make_fields(six_hourly("2000-01-01", "2000-01-10"), seed=1)
    second = make_fields(six_hourly("2000-01-01", "2000-01-10"), seed=2)
    write(first, tmp_path)
    with pytest.raises(FileExistsError, match="s.zarr already exists"):
        write(second, tmp_path)
    np.testing.assert_array_equal(store.open_store(tmp_path / "s.zarr")["t2m"].values, first["t2m"].values)
    replaced = write(second, tmp_path, overwrite=True)
    np.testing.assert_array_equal(replaced["t2m"].values, second["t2m"].values)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


def test_open_store_rejects_missing_and_foreign_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="no ORBIT store"):
        store.open_store(tmp_path / "absent.zarr")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a consolidated zarr store"):
        store.open_store(tmp_path / "empty")
    make_fields(six_hourly("2000-01-01", "2000-01-02")).to_zarr(
        tmp_path / "plain.zarr", zarr_format=2, consolidated=True)
    with pytest.raises(ValueError, match="orbit_store_version=None"):
        store.open_store(tmp_path / "plain.zarr")
