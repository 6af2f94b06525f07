"""Tests for orbit.data.convert: real CMIP6 / iris sample files and tiny synthetic files -> ORBIT stores."""
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from orbit.data import store
from orbit.data.convert import convert

esmval = pytest.importorskip("esmvaltool_sample_data")
CMIP6_ROOT = Path(esmval.__file__).parent / "data" / "timeseries" / "CMIP6"
IRIS_FILE = Path(pytest.importorskip("iris_sample_data").__file__).parent / "sample_data" / "A1B_north_america.nc"


def sample_files(model: str, first: int = 0, count: int | None = None) -> list[Path]:
    files = sorted(CMIP6_ROOT.glob(f"**/Amon/ta/**/ta_Amon_{model}_*.nc"))
    assert files, f"no esmvaltool sample file for {model}"
    return files[first:None if count is None else first + count]


# --------------------------------------------------------------------------- real CMIP6 sample data
@pytest.mark.parametrize("model,calendar,n_files", [
    ("MIROC6", "gregorian", 2),  # two decades joined in time
    ("KACE-1-0-G", "360_day", 1),
    ("INM-CM5-0", "365_day", 1),
    ("MPI-ESM1-2-LR", "proleptic_gregorian", 1),
])
def test_real_cmip6_ta_becomes_a_valid_store(tmp_path, model, calendar, n_files):
    """The sample files are small polar patches (2-3 x 2-3 points), so they convert as regional stores."""
    files = sample_files(model, count=n_files)
    assert xr.open_dataset(files[0], decode_times=False)["time"].attrs["calendar"] == calendar
    out = convert(files, tmp_path / f"{model}.zarr", fmt="cmip6", grid=(32, 64), source=model,
                  allow_regional=True)
    ds = store.open_store(out)
    assert ds.attrs["source"] == model and ds.attrs["kind"] == "model" and ds.attrs["grid"] == "32x64"
    assert ds.attrs["time_step"] == "1M" and ds.attrs["source_id"] == model
    assert ds["t"].dims == ("time", "level", "lat", "lon") and ds["t"].dtype == np.float32
    assert ds["level"].values.tolist() == [925, 1000]
    lat, lon = ds["lat"].values, ds["lon"].values
    assert np.all(np.diff(lat) > 0) and np.all(np.diff(lon) > 0) and lon.min() >= 0 and lon.max() < 360
    assert ds["time"].dtype == np.dtype("datetime64[ns]") and np.all(np.diff(ds["time"].values) > np.timedelta64(0))
    t = ds["t"].values
    assert np.isfinite(t).all() and 180 < t.min() and t.max() < 320
    assert store.channel_names(ds) == ["t925", "t1000"]
    mean, std = ds["norm_mean"].values, ds["norm_std"].values
    assert np.all(std > 0) and np.all((180 < mean) & (mean < 320))
    assert ds["clim_coef"].shape == (2, 15, 32, 64)
    years = ds["time"].dt.year.values
    n_years = np.unique(years).size
    first, last = (int(y) for y in ds.attrs["train_years"].split("-"))
    assert first == years.min() and last - first + 1 == n_years - int(np.ceil(0.2 * n_years))


def test_real_regridded_values_stay_within_the_source_values(tmp_path):
    files = sample_files("INM-CM5-0", count=1)
    raw = xr.open_dataset(files[0])["ta"].sel(plev=92500.0)
    out = store.open_store(convert(files, tmp_path / "c.zarr", grid=(8, 8), source="c", allow_regional=True))
    t925 = out["t"].sel(level=925).values
    assert np.all(t925.min(axis=(1, 2)) >= raw.min(["lat", "lon"]).values - 1e-3)
    assert np.all(t925.max(axis=(1, 2)) <= raw.max(["lat", "lon"]).values + 1e-3)


def test_real_polar_patch_is_refused_without_allow_regional(tmp_path):
    with pytest.raises(ValueError, match="not the whole globe.*allow_regional=True"):
        convert(sample_files("INM-CM5-0", count=1), tmp_path / "x.zarr", grid=(32, 64), source="x")
    assert not (tmp_path / "x.zarr").exists()


def test_missing_levels_list_the_available_ones(tmp_path):
    with pytest.raises(ValueError, match=r"no level\(s\) \[850\] hPa; available levels: \[925, 1000\]"):
        convert(sample_files("INM-CM5-0", count=1), tmp_path / "x.zarr", grid=(32, 64), levels=[850], source="x",
                allow_regional=True)


def test_selected_level_only(tmp_path):
    ds = store.open_store(convert(sample_files("INM-CM5-0", count=1), tmp_path / "c.zarr", grid=(4, 4), levels=[1000],
                                  source="c", allow_regional=True, train_years=(1950, 1955)))
    assert ds["level"].values.tolist() == [1000] and ds.attrs["train_years"] == "1950-1955"


# --------------------------------------------------------------------------- iris regional file
def test_iris_north_america_is_regional(tmp_path):
    with pytest.raises(ValueError, match="lat 15.000..60.000, lon 225.000..315.000"):
        convert([IRIS_FILE], tmp_path / "na.zarr", grid=(16, 24), source="hadcm3")
    native = store.open_store(convert([IRIS_FILE], tmp_path / "na.zarr", source="hadcm3", allow_regional=True))
    assert native.attrs["grid"] == "37x49" and native.attrs["time_step"] == "1Y"
    assert float(native["lat"][0]) == 15.0 and float(native["lon"][-1]) == 315.0
    coarse = store.open_store(convert([IRIS_FILE], tmp_path / "na16.zarr", grid=(16, 24), source="hadcm3",
                                      allow_regional=True))
    assert "t2m: conservative" in coarse.attrs["history"]
    assert 15 < float(coarse["lat"][0]) and float(coarse["lat"][-1]) < 60
    # conservative coarsening keeps the regional mean (up to the half cells at the domain edge)
    w_native = np.cos(np.deg2rad(native["lat"]))
    w_coarse = np.cos(np.deg2rad(coarse["lat"]))
    mean_native = float(native["t2m"].weighted(w_native).mean())
    assert float(coarse["t2m"].weighted(w_coarse).mean()) == pytest.approx(mean_native, abs=0.5)


# --------------------------------------------------------------------------- synthetic global files
def write_global_cmip6(tmp_path: Path) -> list[Path]:
    """tas, pr, zg on a 10 x 20 grid with lat descending and lon -180..180, noleap daily, 3 years."""
    times = xr.date_range("2001-01-01", "2003-12-31", freq="D", calendar="noleap", use_cftime=True)
    lat = np.arange(81.0, -90, -18.0)  # 81 .. -81, descending
    lon = np.arange(-180.0, 180, 18.0)
    rng = np.random.default_rng(0)
    shape = (times.size, lat.size, lon.size)
    common = {"time": times, "lat": ("lat", lat, {"units": "degrees_north"}),
              "lon": ("lon", lon, {"units": "degrees_east"})}
    variables = {
        "tas": (("time", "lat", "lon"), np.broadcast_to(300 - np.abs(lat)[:, None], shape), "K"),
        "pr": (("time", "lat", "lon"), rng.exponential(2e-5, shape) * (rng.random(shape) < 0.3), "kg m-2 s-1"),
        "zg": (("time", "plev", "lat", "lon"), np.broadcast_to(np.array([5500.0, 1500.0, 100.0])[None, :, None, None],
                                                               (times.size, 3, lat.size, lon.size)), "m"),
    }
    paths = []
    for name, (dims, values, units) in variables.items():
        plev = {"plev": ("plev", [50000.0, 85000.0, 100000.0], {"units": "Pa"})} if "plev" in dims else {}
        coords = {**common, **plev}
        ds = xr.Dataset({name: (dims, values.astype(np.float32), {"units": units})}, coords=coords,
                        attrs={"variable_id": name})
        paths.append(tmp_path / f"{name}_day_TOY_2001-2003.nc")
        ds.to_netcdf(paths[-1])
    return paths


def test_synthetic_global_cmip6_native_grid(tmp_path):
    ds = store.open_store(convert(write_global_cmip6(tmp_path), tmp_path / "toy.zarr", levels=[500, 850],
                                  source="toy"))
    assert list(store.channel_names(ds)) == ["t2m", "tp", "z500", "z850"]
    assert ds.attrs["grid"] == "10x20" and ds.attrs["time_step"] == "1D" and ds.attrs["train_years"] == "2001-2002"
    np.testing.assert_array_equal(ds["lat"].values, np.arange(-81.0, 90, 18.0))
    np.testing.assert_array_equal(ds["lon"].values, np.arange(0.0, 360, 18.0))
    np.testing.assert_allclose(ds["t2m"].values[0, :, 0], 300 - np.abs(np.arange(-81.0, 90, 18.0)))
    np.testing.assert_allclose(ds["z"].sel(level=850).values, 1500 * 9.80665, rtol=1e-6)
    assert float(ds["tp"].min()) >= 0 and 0.1 < float(ds["tp"].mean()) < 0.2  # 0.3 * 2e-5 * 21600 = 0.13
    assert "[t2m: none; tp: none; z: none]" in ds.attrs["history"]


@pytest.mark.parametrize("method", ["bilinear", "conservative"])
def test_synthetic_global_cmip6_regridded(tmp_path, method):
    ds = store.open_store(convert(write_global_cmip6(tmp_path), tmp_path / "toy.zarr", grid=(8, 16), levels=[850],
                                  variables=["tp", "z"], source="toy", method=method))
    assert list(store.channel_names(ds)) == ["tp", "z850"] and ds.attrs["grid"] == "8x16"
    assert ds["lat"].values[0] == pytest.approx(-78.75) and ds["lon"].values[1] == pytest.approx(22.5)
    np.testing.assert_allclose(ds["z"].values, 1500 * 9.80665, rtol=1e-6)  # a constant stays constant
    assert float(ds["tp"].min()) >= 0


# --------------------------------------------------------------------------- synthetic ERA5 / WB2 zarr
def write_wb2(path: Path) -> Path:
    times = np.arange("2019-01-01", "2021-01-01", np.timedelta64(6, "h"), dtype="datetime64[ns]")
    lat = np.linspace(90, -90, 9)  # 22.5 deg with poles, descending like ERA5
    lon = np.arange(0, 360, 20.0)
    shape = (times.size, lat.size, lon.size)
    level = np.array([250, 500, 850])
    rain = np.random.default_rng(0).exponential(1e-3, shape).astype(np.float32)
    z = np.broadcast_to((np.array([1e5, 5.5e4, 1.5e4]))[None, :, None, None], (times.size, 3, lat.size, lon.size))
    ds = xr.Dataset(
        {
            "2m_temperature": (("time", "latitude", "longitude"), np.full(shape, 280.0, np.float32), {"units": "K"}),
            "total_precipitation_6hr": (("time", "latitude", "longitude"), rain, {"units": "m"}),
            "geopotential": (("time", "level", "latitude", "longitude"), z.astype(np.float32),
                             {"units": "m**2 s**-2"}),
            "geopotential_at_surface": (("latitude", "longitude"), np.full((9, 18), 980.665),
                                        {"units": "m**2 s**-2"}),
        },
        coords={"time": times, "latitude": lat, "longitude": lon, "level": level},
    )
    ds.to_zarr(path, zarr_format=2, consolidated=True)
    return path


def test_era5_zarr_conversion(tmp_path):
    ds = store.open_store(convert([write_wb2(tmp_path / "era5.zarr")], tmp_path / "era5_orbit.zarr", fmt="auto",
                                  grid=(4, 8), levels=[500, 850], source="era5"))
    assert ds.attrs["kind"] == "reanalysis" and ds.attrs["time_step"] == "6h"
    assert ds.attrs["train_years"] == "2019-2019"
    assert list(store.channel_names(ds)) == ["t2m", "tp", "z500", "z850"]
    np.testing.assert_allclose(ds["t2m"].values, 280.0, rtol=1e-6)
    np.testing.assert_allclose(ds["z"].sel(level=500).values, 5.5e4, rtol=1e-6)
    assert float(ds["tp"].min()) >= 0 and float(ds["tp"].mean()) == pytest.approx(1.0, rel=0.05)  # m -> mm
    np.testing.assert_allclose(ds["orography"].values, 100.0, rtol=1e-5)
    assert "t2m: conservative" in ds.attrs["history"]


# --------------------------------------------------------------------------- argument errors
def test_errors_before_any_work(tmp_path):
    files = sample_files("INM-CM5-0", count=1)
    out = tmp_path / "x.zarr"
    with pytest.raises(FileNotFoundError, match="not found"):
        convert([tmp_path / "missing.nc"], out, source="x")
    with pytest.raises(ValueError, match="unknown format 'grib'"):
        convert(files, out, fmt="grib", source="x")
    with pytest.raises(ValueError, match=r"unknown variable name\(s\) \['tas'\]; valid ORBIT names: \['t2m'"):
        convert(files, out, variables=["tas"], source="x")
    with pytest.raises(ValueError, match=r"variable\(s\) \['t2m'\] are not in the cmip6 input; it holds \['t'\]"):
        convert(files, out, variables=["t2m"], source="x", allow_regional=True)
    with pytest.raises(ValueError, match="grid must be two integers"):
        convert(files, out, grid=(0, 64), source="x")
    with pytest.raises(ValueError, match="unknown regridding method"):
        convert(files, out, method="nearest", source="x")
    with pytest.raises(ValueError, match="train_years \\(1700, 1750\\) do not overlap the data years 1950-1959"):
        convert(files, out, grid=(4, 4), train_years=(1700, 1750), source="x", allow_regional=True)
    with pytest.raises(ValueError, match="cannot tell the format"):
        convert([IRIS_FILE.parent / "A1B.2098.pp"], out, source="x")
    out.mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        convert(files, out, source="x")


def test_too_few_training_steps_are_refused(tmp_path):
    """One monthly year holds 12 steps, fewer than the 15 climatology basis functions."""
    with pytest.raises(ValueError, match="train_years 1950-1950 hold 12 time steps; .* at least 15"):
        convert(sample_files("INM-CM5-0", count=1), tmp_path / "x.zarr", grid=(4, 4), train_years=(1950, 1950),
                source="x", allow_regional=True)
