"""Real files as users have them: time windows, variable maps, unit spellings (UDUNITS), COARDS packing,
and bad input refused before work with nothing left behind. Through `orbit data convert` where it matters."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from orbit.cli import main
from orbit.data import readers, store
from orbit.data.convert import convert

IRIS_DATA = Path(pytest.importorskip("iris_sample_data").__file__).parent / "sample_data"


def write_coards(path: Path, units: str = "degK") -> Path:
    """An NCEP-reanalysis-like file: variable 'air' without standard_name, latitude 90 -> -90, int16 packed
    with scale_factor/add_offset and a fill value, time in 'hours since 1800-01-01', daily, 2000-01-01..03-31."""
    times = pd.date_range("2000-01-01", "2000-03-31", freq="D")
    lat, lon = np.linspace(90.0, -90.0, 9), np.arange(0.0, 360.0, 22.5)
    values = 250.0 + 0.5 * np.arange(times.size)[:, None, None] + np.cos(np.deg2rad(lat))[None, :, None] * 30 \
        + np.zeros(lon.size)
    ds = xr.Dataset({"air": (("time", "lat", "lon"), values, {"units": units, "long_name": "mean daily air temperature"})},
                    coords={"time": times, "lat": ("lat", lat, {"units": "degrees_north"}),
                            "lon": ("lon", lon, {"units": "degrees_east"})})
    encoding = {"air": {"dtype": "int16", "scale_factor": 0.01, "add_offset": 280.0, "_FillValue": np.int16(32767)},
                "time": {"units": "hours since 1800-01-01 00:00:0.0", "calendar": "standard"}}
    ds.to_netcdf(path, encoding=encoding)
    return path


def convert_cli(tmp_path: Path, *args: str) -> int:
    return main(["data", "convert", *args, "--output", str(tmp_path / "out.zarr"), "--source", "user",
                 "--train-years", "2000", "2000"])


def leftovers(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out.zarr"))


def test_coards_file_with_a_variable_map_and_a_time_window(tmp_path):
    raw = xr.open_dataset(write_coards(tmp_path / "air.day.2000.nc"), decode_cf=False)
    assert raw["air"].dtype == np.int16 and raw["lat"].values[0] == 90.0  # packed, north to south
    assert convert_cli(tmp_path, str(tmp_path / "air.day.2000.nc"), "--rename", "air=t2m",
                       "--time", "2000-01-15", "2000-02-29") == 0
    ds = store.open_store(tmp_path / "out.zarr")
    assert ds["time"].values[0] == np.datetime64("2000-01-15T00") and ds["time"].values[-1] == np.datetime64("2000-02-29")
    assert ds.sizes["time"] == 46 and np.all(np.diff(ds["lat"].values) > 0)
    expected = 250.0 + 0.5 * 14 + np.cos(np.deg2rad(ds["lat"].values)) * 30
    np.testing.assert_allclose(ds["t2m"].values[0, :, 3], expected, atol=0.006)  # packing resolution 0.01 K
    assert "time 2000-01-15 .. 2000-02-29; renamed {'air': 't2m'}" in ds.attrs["history"]
    assert leftovers(tmp_path) == ["out.zarr"]


def test_variable_map_from_yaml(tmp_path):
    write_coards(tmp_path / "air.nc")
    (tmp_path / "map.yaml").write_text("air: t2m\n")
    assert convert_cli(tmp_path, str(tmp_path / "air.nc"), "--variable-map", str(tmp_path / "map.yaml")) == 0
    assert store.channel_names(store.open_store(tmp_path / "out.zarr")) == ["t2m"]


def test_time_window_end_is_inclusive_like_xarray_sel(tmp_path):
    times = pd.date_range("2000-01-01", "2000-01-10T18", freq="6h").values
    da = xr.DataArray(np.zeros((times.size, 2, 2), np.float32), dims=("time", "lat", "lon"),
                      coords={"time": times, "lat": [0.0, 1.0], "lon": [0.0, 1.0]}, attrs={"units": "K"})
    out = readers._as_field(da, "t2m", "t2m", ("2000-01-02", "2000-01-03"))
    np.testing.assert_array_equal(out["time"].values, da.sel(time=slice("2000-01-02", "2000-01-03"))["time"].values)
    assert out.sizes["time"] == 8


@pytest.mark.parametrize("units, value, expected", [
    ("degC", 15.0, 288.15), ("degK", 288.0, 288.0), ("Kelvin", 288.0, 288.0), ("degF", 32.0, 273.15),
])
def test_temperature_unit_spellings(tmp_path, units, value, expected):
    da = xr.DataArray(np.full((2, 2, 2), value), dims=("time", "lat", "lon"),
                      coords={"time": pd.date_range("2000", periods=2), "lat": [0.0, 1.0], "lon": [0.0, 1.0]},
                      attrs={"units": units})
    np.testing.assert_allclose(readers._as_field(da, "t2m", "tas").values, expected, rtol=1e-6)


@pytest.mark.parametrize("units, value, mm_per_6h", [
    ("kg m**-2 s**-1", 1e-4, 2.16), ("kg m-2 s-1", 1e-4, 2.16), ("mm/day", 8.0, 2.0), ("m", 0.002, 2.0),
    ("kg m-2", 2.0, 2.0),
])
def test_precipitation_units_as_rates_or_amounts(units, value, mm_per_6h):
    da = xr.DataArray(np.full((2, 2, 2), value), dims=("time", "lat", "lon"),
                      coords={"time": pd.date_range("2000", periods=2), "lat": [0.0, 1.0], "lon": [0.0, 1.0]},
                      attrs={"units": units})
    np.testing.assert_allclose(readers._as_field(da, "tp", "pr").values, mm_per_6h, rtol=1e-5)


def test_real_hadisst_file_degc_descending_lat_and_missing_land(tmp_path):
    """cartopy's HadISST1 file: COARDS-style (latitude 89.5 -> -89.5, longitude -179.5..179.5), sst in degC,
    land as fill values, one month. Read with a variable map; a store of one time step is refused."""
    hadisst = Path(pytest.importorskip("cartopy").__file__).parent / "data" / "netcdf" / "HadISST1_SST_update.nc"
    raw = xr.open_dataset(hadisst)["sst"]
    t2m = readers.open_cmip6([hadisst], rename={"sst": "t2m"}).fields["t2m"]
    assert np.all(np.diff(t2m["lat"].values) > 0) and t2m["lon"].min() >= 0 and t2m["lon"].max() < 360
    point = raw.sel(lat=-0.5, lon=-150.5).values[0]
    assert np.isfinite(point)
    assert float(t2m.sel(lat=-0.5, lon=360 - 150.5)[0]) == pytest.approx(point + 273.15, abs=1e-4)
    assert int(np.isnan(t2m.values).sum()) == int(raw.isnull().sum()) > 0  # land stays missing
    with pytest.raises(ValueError, match="train_years 2012-2012 hold 1 time steps; the climatology fit needs at least 15"):
        convert([hadisst], tmp_path / "out.zarr", source="hadisst", rename={"sst": "t2m"})
    assert leftovers(tmp_path) == []


def test_real_360_day_file_in_a_time_window(tmp_path):
    """iris's E1 scenario file: annual 1.5 m temperature on a 360-day calendar over North America."""
    path = IRIS_DATA / "E1_north_america.nc"
    ds = store.open_store(convert([path], tmp_path / "e1.zarr", source="hadcm3_e1", allow_regional=True,
                                  time=("2000-01-01", "2049-12-31"), train_years=(2000, 2039)))
    years = ds["time"].dt.year.values
    assert years[0] == 2000 and years[-1] == 2049 and ds.sizes["time"] == 50
    raw = readers.to_datetime64(xr.open_dataset(path, decode_times=xr.coders.CFDatetimeCoder(use_cftime=True)))
    raw = raw["air_temperature"].sel(time=slice("2000-01-01", "2049-12-31"))
    np.testing.assert_allclose(ds["t2m"].values, raw.values, rtol=1e-6)


@pytest.mark.parametrize("args, message", [
    (["--rename", "air=t2m", "--time", "1990-01-01", "1990-12-31"], "holds no time step of variable 't2m'"),
    (["--rename", "air=t2m", "--time", "2000-03-01", "2000-01-01"], "time window starts after it ends"),
    (["--rename", "air=t2m", "--time", "2000-01-01", "someday"], "time window must be two dates"),
    (["--rename", "air=temperature"], r"names unknown ORBIT variable\(s\); valid: \['t2m'"),
    (["--rename", "air=t2m", "--rename", "hgt=z"], r"source variable\(s\) \['hgt'\] that no input holds"),
    (["--rename", "air=t2m", "--rename", "lat=t2m"], "sends several source variables to"),
    ([], "or name it with a variable map \\(CLI: --rename air=t2m\\)"),
])
def test_bad_selection_is_refused_before_work(tmp_path, capsys, args, message):
    write_coards(tmp_path / "air.nc")
    assert convert_cli(tmp_path, str(tmp_path / "air.nc"), *args) == 2
    assert __import__("re").search(message, capsys.readouterr().err)
    assert leftovers(tmp_path) == []


def test_unknown_unit_is_refused(tmp_path, capsys):
    write_coards(tmp_path / "air.nc", units="degrees of warmth")
    assert convert_cli(tmp_path, str(tmp_path / "air.nc"), "--rename", "air=t2m") == 2
    assert "units 'degrees of warmth', which UDUNITS cannot parse" in capsys.readouterr().err
    assert leftovers(tmp_path) == []
