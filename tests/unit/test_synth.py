"""Tests for the toy-Earth generator: API checks, determinism, physics and forecast-skill sanity."""
import numpy as np
import pytest
import xarray as xr

from orbit.data import store
from orbit.synthetic import toy_earth as synth

GRID = (16, 32)


@pytest.fixture(scope="module")
def two_years():
    return synth.generate("cmip_a", (2000, 2001), GRID, seed=0)


def test_invalid_arguments_name_the_valid_values(tmp_path):
    with pytest.raises(ValueError, match=r"unknown toy source 'cmip_z'; valid: \['cmip_a', 'cmip_b'"):
        synth.generate("cmip_z", (2000, 2000), GRID)
    for grid in [(15, 30), (16, 33), (8, 16), (512, 1024)]:
        with pytest.raises(ValueError, match=r"grid must be \(H, 2H\) with H even in \[16, 256\]"):
            synth.generate("cmip_a", (2000, 2000), grid)
    with pytest.raises(ValueError, match="start <= end"):
        synth.generate("cmip_a", (2001, 2000), GRID)
    with pytest.raises(ValueError, match=r"train_years \(1999, 2000\) must lie within years"):
        synth.synthesize(tmp_path, ["cmip_a"], years=(2000, 2000), grid=GRID, train_years=(1999, 2000))
    assert not any(tmp_path.iterdir())


def test_sources_differ_in_variables_and_physics():
    assert {"cmip_a", "cmip_b", "cmip_c", "reanalysis"} <= set(synth.SOURCES)
    assert set(synth.SOURCES["cmip_b"].variables) == set(synth.ALL_VARIABLES) - {"q", "tp"}
    assert set(synth.SOURCES["cmip_c"].variables) == set(synth.ALL_VARIABLES) - {"u10", "v10"}
    assert synth.SOURCES["reanalysis"].variables == synth.ALL_VARIABLES
    assert synth.SOURCES["reanalysis"].kind == "reanalysis"
    physics = {(s.jet_speed, s.bias, s.diffusion, s.diurnal_land) for s in synth.SOURCES.values()}
    assert len(physics) == len(synth.SOURCES)


def test_layout_matches_the_store_contract(two_years):
    fields, statics = two_years
    assert fields.sizes == {"time": 2 * 1464 - 4, "level": 2, "lat": 16, "lon": 32}
    assert fields["time"].values[0] == np.datetime64("2000-01-01T00")
    assert np.all(np.diff(fields["time"].values) == np.timedelta64(6, "h"))
    assert len(store.channel_names(fields)) == 14
    assert all(fields[v].dtype == np.float32 for v in fields.data_vars)
    lat = fields["lat"].values
    assert np.all(np.diff(lat) > 0) and -90 < lat[0] and lat[-1] < 90
    assert set(statics.data_vars) == set(store.STATIC_NAMES)


def test_geography_is_plausible(two_years):
    _, statics = two_years
    land = statics["land_sea_mask"].values
    orography = statics["orography"].values
    assert set(np.unique(land)) == {0.0, 1.0}
    assert 0.2 < land.mean() < 0.45
    assert np.all(orography[land == 0] == 0) and orography.max() > 2000


def test_value_ranges_are_physical(two_years):
    fields, _ = two_years
    t2m, tp, z500, q = fields["t2m"].values, fields["tp"].values, fields["z"].sel(level=500).values, fields["q"].values
    assert 200 < t2m.min() and t2m.max() < 330 and 270 < t2m.mean() < 295
    assert 4.5e4 < z500.min() and z500.max() < 6.1e4
    assert fields["t"].sel(level=500).mean() < fields["t"].sel(level=850).mean()
    assert 0 <= q.min() and q.max() < 0.03
    assert np.abs(fields["u"].values).max() < 100 and np.abs(fields["v10"].values).max() < 60
    assert tp.min() >= 0
    assert 0.3 < (tp < 0.01).mean() < 0.95, "precipitation must be intermittent"
    assert tp.max() > 2.0


def test_cycles_and_surface_contrasts(two_years):
    fields, statics = two_years
    land = statics["land_sea_mask"].values.astype(bool)
    t2m = fields["t2m"]
    # seasons: northern mid-latitudes warmer in July than in January, southern the other way round
    month = fields["time"].dt.month
    north, south = fields["lat"] > 30, fields["lat"] < -30
    july, january = t2m.where(month == 7, drop=True).mean("time"), t2m.where(month == 1, drop=True).mean("time")
    assert (july - january).where(north).mean() > 5 and (july - january).where(south).mean() < -3
    # the diurnal cycle is larger over land than over sea
    step_change = np.abs(np.diff(t2m.values, axis=0)).mean(axis=0)
    assert step_change[land].mean() > 2 * step_change[~land].mean()
    # lapse rate: the highest mountains are colder than the sea at their latitude
    orography = statics["orography"].values
    j, i = np.unravel_index(np.argmax(orography), orography.shape)
    mean_t2m = t2m.values.mean(axis=0)
    assert mean_t2m[j, i] < mean_t2m[j][~land[j]].mean() - 5


def test_forecast_baselines_leave_room_for_skill(two_years):
    fields, _ = two_years
    skill = synth.baseline_rmse(fields, (2000, 2000), (2001, 2001))
    ratio = skill.div(skill["climatology"], axis=0)
    assert (skill[["persistence_6h", "persistence_24h", "persistence_72h"]] > 0).all().all()
    # the diurnal cycle makes 6 h persistence poor for t2m ...
    assert ratio.loc["t2m", "persistence_6h"] > 1.0
    # ... while the synoptic fields are coherent over 6 h, decorrelate within a day or so, and
    # persistence beyond a few days is worse than climatology
    synoptic = ["z500", "z850", "t850", "u500", "v500", "q850"]
    assert (ratio.loc[synoptic, "persistence_6h"] < 0.5).all()
    assert (ratio["persistence_24h"] > 0.6).mean() >= 0.75
    assert (ratio.loc[synoptic, "persistence_72h"] > 1.0).all()


def test_generation_is_deterministic_by_seed(two_years, tmp_path):
    fields, _ = two_years
    paths = synth.synthesize(tmp_path, ["cmip_b"], years=(2000, 2000), grid=GRID, seed=3)
    assert paths == {"cmip_b": tmp_path / "cmip_b.zarr"}
    again, _ = synth.generate("cmip_b", (2000, 2000), GRID, seed=3)
    written = store.open_store(paths["cmip_b"])
    for name in again.data_vars:
        np.testing.assert_array_equal(written[name].values, again[name].values)
    assert store.channel_names(written) == ["t2m", "u10", "v10", "z500", "z850", "t500", "t850",
                                             "u500", "u850", "v500", "v850"]
    assert written.attrs["kind"] == "model" and "cmip_b" in written.attrs["history"]
    with pytest.raises(FileExistsError, match="cmip_b.zarr"):
        synth.synthesize(tmp_path, ["cmip_b"], years=(2000, 2000), grid=GRID, seed=3)

    other_seed, _ = synth.generate("cmip_a", (2000, 2000), GRID, seed=1)
    first_year = fields.sel(time=slice("2000", "2000"))
    assert not np.array_equal(other_seed["z"].values, first_year["z"].values)
    xr.testing.assert_identical(other_seed["lat"], first_year["lat"])


def _anomaly(array: np.ndarray) -> np.ndarray:
    return array - array.mean(axis=0)


def _residual(target: np.ndarray, *predictors: np.ndarray) -> np.ndarray:
    """Per grid point, what a least-squares fit of ``target`` (T, H, W) on the ``predictors``
    (each (T, H, W)) leaves unexplained: (T, H, W), 0 if target is a linear function of them."""
    t = target.shape[0]
    y = _anomaly(target).reshape(t, -1)
    x = np.stack([_anomaly(p).reshape(t, -1) for p in predictors], axis=-1)  # (T, N, P)
    left = []
    for n in range(y.shape[1]):
        coef, *_ = np.linalg.lstsq(x[:, n], y[:, n], rcond=None)
        left.append(y[:, n] - x[:, n] @ coef)
    return np.stack(left, axis=1).reshape(target.shape)


def test_850_hpa_flow_feels_temperature_through_thermal_wind(two_years):
    fields, _ = two_years
    u, v, t = (fields[name].values.astype(np.float64) for name in ("u", "v", "t"))
    lat = np.deg2rad(fields["lat"].values.astype(np.float64))
    mid = np.abs(np.rad2deg(lat)) > 30
    # the 850 hPa wind is not a scaled copy of the 500 hPa one: a per-point linear fit on both
    # 500 hPa components leaves a share of its variance unexplained
    left = _residual(u[:, 1], u[:, 0], v[:, 0]).std(axis=0)
    assert np.median(left[mid]) > 0.3  # m s-1
    # ... and the shear follows the meridional temperature gradient (thermal wind, f > 0 north)
    shear = (u[:, 0] - u[:, 1])[:, mid].mean(axis=(0, 2))
    layer = 0.5 * (t[:, 0] + t[:, 1]).mean(axis=(0, 2))
    thermal = -synth.R_D * np.log(850 / 500) / (2 * synth.OMEGA * np.sin(lat)) * np.gradient(layer, lat) / synth.A_EARTH
    assert np.corrcoef(shear, thermal[mid])[0, 1] > 0.9
    north = lat[mid] > 0
    assert np.all(shear[north] > 0) and np.all(np.abs(shear - thermal[mid]) < 0.5 * np.abs(thermal[mid]) + 2.0)


def test_surface_channels_have_dynamics_of_their_own(two_years):
    """t2m is not t850 plus terms fixed by place and time, nor (u10, v10) a linear map of the
    850 hPa wind: the surface layer remembers (soil moisture, mixed layer, boundary-layer wind)."""
    fields, statics = two_years
    land = statics["land_sea_mask"].values.astype(bool)
    earth = synth.ToyEarth(synth.SOURCES["cmip_a"], GRID)
    times = fields["time"].values
    forcings = [earth.forcing(time) for time in times]
    diurnal = np.stack([forcing.diurnal for forcing in forcings])
    season = np.sin([forcing.lagged_declination for forcing in forcings])[:, None, None] * np.sin(earth.phi)
    t850 = fields["t"].values[:, 1].astype(np.float64)
    t2m = fields["t2m"].values.astype(np.float64)
    hour = (times.astype("datetime64[h]").astype(int) % 24)[:, None, None] * np.ones_like(t2m)
    season = season * np.ones_like(t2m)
    left = _residual(t2m, t850, diurnal, season, np.cos(np.pi * hour / 12), np.sin(np.pi * hour / 12))
    assert np.median(left.std(axis=0)[land]) > 0.2  # K (0.0 when t2m was a diagnostic of t850)
    u850, v850 = (fields[name].values[:, 1].astype(np.float64) for name in ("u", "v"))
    left_u = _residual(fields["u10"].values.astype(np.float64), u850, v850).std(axis=0)
    assert np.median(left_u) > 0.3  # m s-1
    # rain cools and wets the land: after wet weeks t2m sits below what the fit predicts
    rain = np.cumsum(fields["tp"].values.astype(np.float64), axis=0)
    wet = rain[28:] - rain[:-28]
    correlations = [np.corrcoef(wet[:, j, i], left[28:, j, i])[0, 1] for j, i in zip(*np.nonzero(land))
                    if wet[:, j, i].std() > 0]
    assert np.mean(correlations) < -0.1
