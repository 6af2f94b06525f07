"""Tests for orbit.data.readers: calendars, coordinates, names and units of CMIP6 netCDF and ERA5 zarr."""
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from orbit.data import readers, units

esmval = pytest.importorskip("esmvaltool_sample_data")
CMIP6_ROOT = Path(esmval.__file__).parent / "data" / "timeseries" / "CMIP6"
IRIS_FILE = Path(pytest.importorskip("iris_sample_data").__file__).parent / "sample_data" / "A1B_north_america.nc"


def cftime_axis(start: str, periods: int, freq: str, calendar: str) -> xr.CFTimeIndex:
    return xr.date_range(start, periods=periods, freq=freq, calendar=calendar, use_cftime=True)


def write_cmip6(path: Path, var: str, data: np.ndarray, *, times, lat, lon, plev=None, units: str,
                standard_name: str = "") -> Path:
    """A CMIP6-like file: one variable, CF time encoding, optional plev (Pa)."""
    dims = ("time", "plev", "lat", "lon") if plev is not None else ("time", "lat", "lon")
    coords = {"time": times, "lat": ("lat", lat, {"units": "degrees_north"}),
              "lon": ("lon", lon, {"units": "degrees_east"})}
    if plev is not None:
        coords["plev"] = ("plev", plev, {"units": "Pa"})
    ds = xr.Dataset({var: (dims, data.astype(np.float32), {"units": units, "standard_name": standard_name})},
                    coords=coords, attrs={"variable_id": var, "source_id": "TOY-ESM"})
    ds.to_netcdf(path)
    return path


# --------------------------------------------------------------------------- time
def test_360_day_dates_keep_their_fraction_of_the_year_and_time_of_day():
    times = xr.DataArray(np.arange(3), dims="time", coords={
        "time": cftime_axis("1900-02-29 12:00", 3, "D", "360_day")})  # 29 Feb, 30 Feb, 1 Mar
    out = readers.to_datetime64(times)
    assert out["time"].dtype == np.dtype("datetime64[ns]")
    np.testing.assert_array_equal(out["time"].values, np.array(
        ["1900-03-01T12:00", "1900-03-02T12:00", "1900-03-03T12:00"], dtype="datetime64[ns]"))


def test_noleap_dates_are_unchanged_and_julian_only_dates_are_dropped():
    noleap = xr.DataArray(np.arange(2), dims="time", coords={"time": cftime_axis("2001-02-28", 2, "D", "noleap")})
    np.testing.assert_array_equal(readers.to_datetime64(noleap)["time"].values,
                                  np.array(["2001-02-28", "2001-03-01"], dtype="datetime64[ns]"))
    julian = xr.DataArray(np.arange(3), dims="time", coords={"time": cftime_axis("1900-02-28", 3, "D", "julian")})
    out = readers.to_datetime64(julian)  # 1900-02-29 exists in the Julian calendar only
    np.testing.assert_array_equal(out["time"].values, np.array(["1900-02-28", "1900-03-01"], dtype="datetime64[ns]"))
    np.testing.assert_array_equal(out.values, [0, 2])


@pytest.mark.parametrize("freq,expected", [("6h", "6h"), ("D", "1D"), ("MS", "1M"), ("YS", "1Y"), ("3h", "3h")])
def test_time_step_is_inferred_from_the_median_spacing(freq, expected):
    times = xr.date_range("2000-01-01", periods=30, freq=freq).values
    assert readers.infer_time_step(times) == expected


# --------------------------------------------------------------------------- CMIP6
def test_cmip6_file_is_canonicalized(tmp_path):
    """Descending lat, -180..180 lon, plev in Pa descending, zg in m, pr in kg m-2 s-1 with noise < 0."""
    times = cftime_axis("2000-01-01", 4, "6h", "noleap")
    lat = np.array([60.0, 0.0, -60.0])
    lon = np.array([-90.0, 0.0, 90.0, 180.0])
    zg = np.zeros((4, 2, 3, 4))
    zg[:, 0] = 1500.0  # 850 hPa (stored first: plev descending)
    zg[:, 1] = 5500.0  # 500 hPa
    zg[:, 0, 0, 0] = 1234.0  # 850 hPa, lat 60, lon -90 (= 270)
    pr = np.full((4, 3, 4), 1e-4)
    pr[0, 2, 3] = -1e-9
    files = [
        write_cmip6(tmp_path / "zg.nc", "zg", zg, times=times, lat=lat, lon=lon, plev=[85000.0, 50000.0], units="m"),
        write_cmip6(tmp_path / "pr.nc", "pr", pr, times=times, lat=lat, lon=lon, units="kg m-2 s-1"),
    ]
    data = readers.open_cmip6(files)
    z, tp = data.fields["z"], data.fields["tp"]
    assert z.dims == ("time", "level", "lat", "lon") and tp.dims == ("time", "lat", "lon")
    np.testing.assert_array_equal(z["lat"], [-60.0, 0.0, 60.0])
    np.testing.assert_array_equal(z["lon"], [0.0, 90.0, 180.0, 270.0])
    np.testing.assert_array_equal(z["level"], [500.0, 850.0])
    assert float(z.sel(level=850, lat=60, lon=270)[0]) == pytest.approx(1234.0 * units.GRAVITY)
    assert float(z.sel(level=500)[0, 0, 0]) == pytest.approx(5500.0 * units.GRAVITY)
    np.testing.assert_allclose(tp.values[1:], 1e-4 * 6 * 3600, rtol=1e-6)  # mm per 6 h
    assert float(tp.min()) == 0.0  # the negative noise is clipped
    assert z.dtype == np.float32 and z.attrs["units"] == "m2 s-2" and tp.attrs["units"] == "mm"
    assert z["time"].dtype == np.dtype("datetime64[ns]")
    assert data.kind == "model" and data.attrs["source_id"] == "TOY-ESM"


def test_below_ground_values_are_filled_from_the_level_above(tmp_path):
    times = cftime_axis("2000-01-01", 2, "D", "standard")
    ta = np.stack([np.full((2, 2, 2), 250.0), np.full((2, 2, 2), 270.0), np.full((2, 2, 2), 285.0)], axis=1)
    ta[:, 2, 0, 0] = np.nan  # 1000 hPa below ground
    ta[:, 1:, 1, 1] = np.nan  # 850 and 1000 hPa below ground (high terrain)
    path = write_cmip6(tmp_path / "ta.nc", "ta", ta, times=times, lat=[10.0, 20.0], lon=[0.0, 10.0],
                       plev=[50000.0, 85000.0, 100000.0], units="K")
    t = readers.open_cmip6([path]).fields["t"].compute()
    assert not t.isnull().any()
    assert float(t.sel(level=1000)[0, 0, 0]) == 270.0
    np.testing.assert_array_equal(t.isel(lat=1, lon=1)[0].values, [250.0, 250.0, 250.0])
    assert float(t.sel(level=1000)[0, 0, 1]) == 285.0  # valid values untouched


def test_several_files_per_variable_are_joined_in_time_order(tmp_path):
    times = cftime_axis("2000-01-01", 6, "D", "360_day")
    values = np.arange(6, dtype=float)[:, None, None] + np.zeros((6, 2, 3))
    kw = dict(lat=[0.0, 10.0], lon=[0.0, 120.0, 240.0], units="K")
    late = write_cmip6(tmp_path / "tas_b.nc", "tas", values[3:], times=times[3:], **kw)
    early = write_cmip6(tmp_path / "tas_a.nc", "tas", values[:3], times=times[:3], **kw)
    t2m = readers.open_cmip6([late, early]).fields["t2m"]
    np.testing.assert_array_equal(t2m.values[:, 0, 0], np.arange(6))
    assert np.all(np.diff(t2m["time"].values) > np.timedelta64(0))


def test_overlapping_files_are_refused(tmp_path):
    times = cftime_axis("2000-01-01", 4, "D", "noleap")
    kw = dict(lat=[0.0, 10.0], lon=[0.0, 180.0], units="K")
    a = write_cmip6(tmp_path / "a.nc", "tas", np.zeros((3, 2, 2)), times=times[:3], **kw)
    b = write_cmip6(tmp_path / "b.nc", "tas", np.zeros((3, 2, 2)), times=times[1:], **kw)
    with pytest.raises(ValueError, match="cannot join the 2 files of variable 't2m'"):
        readers.open_cmip6([a, b])


def test_unknown_variables_and_units_are_refused(tmp_path):
    times = cftime_axis("2000-01-01", 2, "D", "noleap")
    kw = dict(times=times, lat=[0.0, 10.0], lon=[0.0, 180.0])
    hur = write_cmip6(tmp_path / "hur.nc", "hur", np.zeros((2, 2, 2)), units="%", **kw)
    with pytest.raises(ValueError, match="'hur'.*known CMIP6 names: .*'tas'"):
        readers.open_cmip6([hur])
    tas = write_cmip6(tmp_path / "tas.nc", "tas", np.zeros((2, 2, 2)), units="m s-1", **kw)
    with pytest.raises(ValueError, match="units 'm s-1', which ORBIT cannot convert to the store's 'K': expected "
                                         "units convertible to 'K'"):
        readers.open_cmip6([tas])
    furlongs = write_cmip6(tmp_path / "uas.nc", "uas", np.zeros((2, 2, 2)), units="bananas", **kw)
    with pytest.raises(ValueError, match="units 'bananas', which UDUNITS cannot parse"):
        readers.open_cmip6([furlongs])


def test_cf_standard_name_identifies_non_cmip_files():
    """iris's HadCM3 file names its variable 'air_temperature' (1.5 m): it becomes t2m."""
    data = readers.open_cmip6([IRIS_FILE])
    t2m = data.fields["t2m"]
    assert list(data.fields) == ["t2m"] and t2m.shape == (240, 37, 49)
    assert t2m["lat"].values[0] == 15.0 and t2m["lon"].values[0] == 225.0
    assert 200 < float(t2m.min()) and float(t2m.max()) < 320
    assert readers.infer_time_step(t2m["time"].values) == "1Y"


def test_real_cmip6_360_day_file():
    files = sorted(CMIP6_ROOT.glob("**/Amon/ta/**/ta_Amon_KACE-1-0-G_*.nc"))
    t = readers.open_cmip6(files).fields["t"]
    assert t.sizes["time"] == 1980 and t["level"].values.tolist() == [925.0, 1000.0]
    assert t["time"].values[0] == np.datetime64("1850-01-16")
    assert np.all(np.diff(t["time"].values) > np.timedelta64(0))
    assert 180 < float(t.min()) and float(t.max()) < 320


# --------------------------------------------------------------------------- ERA5 zarr
def write_wb2_zarr(path: Path) -> Path:
    """A tiny WeatherBench2-style store: lat 90..-90 with poles, hPa levels, ERA5 long names."""
    times = np.arange("2020-01-01", "2020-01-03", np.timedelta64(6, "h"), dtype="datetime64[ns]")
    lat = np.linspace(90, -90, 5)
    lon = np.arange(0, 360, 45.0)
    shape2, shape3 = (times.size, lat.size, lon.size), (times.size, 3, lat.size, lon.size)
    temperature = np.broadcast_to(np.array([220.0, 250.0, 280.0])[None, :, None, None], shape3)
    ds = xr.Dataset(
        {
            "2m_temperature": (("time", "latitude", "longitude"), np.broadcast_to(lat[None, :, None] + 270, shape2),
                               {"units": "K"}),
            "total_precipitation_6hr": (("time", "latitude", "longitude"), np.full(shape2, 0.002), {"units": "m"}),
            "temperature": (("time", "level", "latitude", "longitude"), temperature, {"units": "K"}),
            "sea_surface_temperature": (("time", "latitude", "longitude"), np.zeros(shape2), {"units": "K"}),
            "geopotential_at_surface": (("latitude", "longitude"), np.full((5, 8), 9.80665 * 100),
                                        {"units": "m**2 s**-2"}),
            "land_sea_mask": (("latitude", "longitude"), np.ones((5, 8)), {"units": "(0 - 1)"}),
        },
        coords={"time": times, "latitude": lat, "longitude": lon, "level": np.array([250, 500, 850], np.int64)},
    )
    ds.to_zarr(path, zarr_format=2, consolidated=True)
    return path


def test_era5_zarr_is_renamed_and_canonicalized(tmp_path):
    data = readers.open_era5(write_wb2_zarr(tmp_path / "wb2.zarr"))
    assert sorted(data.fields) == ["t", "t2m", "tp"] and data.kind == "reanalysis"
    t2m, t = data.fields["t2m"], data.fields["t"]
    np.testing.assert_array_equal(t2m["lat"], [-90, -45, 0, 45, 90])
    np.testing.assert_allclose(t2m.values[0, :, 0], np.array([-90, -45, 0, 45, 90]) + 270)
    np.testing.assert_array_equal(t["level"], [250, 500, 850])
    assert float(t.sel(level=500).mean()) == 250.0
    np.testing.assert_allclose(data.fields["tp"].values, 2.0, rtol=1e-6)  # m -> mm
    np.testing.assert_allclose(data.statics["orography"].values, 100.0, rtol=1e-6)  # m2 s-2 -> m
    assert data.statics["land_sea_mask"].dims == ("lat", "lon")


def test_model_years_outside_datetime64_range_are_refused():
    control = xr.DataArray(np.arange(2), dims="time", coords={"time": cftime_axis("0001-01-01", 2, "D", "noleap")})
    with pytest.raises(ValueError, match="years 1-1, outside what datetime64\\[ns\\] can hold"):
        readers.to_datetime64(control)
