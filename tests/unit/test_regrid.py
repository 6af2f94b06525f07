"""Tests for orbit.data.regrid: target grids, coverage checks, bilinear and conservative remapping."""
import numpy as np
import pytest
import xarray as xr

from orbit.data import regrid


def field(values: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> xr.DataArray:
    """(time=2, lat, lon) field repeating ``values`` (lat, lon)."""
    return xr.DataArray(np.stack([values, values]).astype(np.float32), dims=("time", "lat", "lon"),
                        coords={"time": [0, 1], "lat": lat, "lon": lon}, name="x")


LAT_1DEG = np.arange(-89.5, 90, 1.0)  # cell-centred global 1 deg grid
LON_1DEG = np.arange(0.5, 360, 1.0)


def test_global_target_grid_follows_the_weatherbench_convention():
    grid = regrid.target_grid((32, 64))
    assert grid.lat[0] == pytest.approx(-87.1875) and grid.lat[-1] == pytest.approx(87.1875)
    assert grid.lon[0] == 0.0 and grid.lon[1] == pytest.approx(5.625) and grid.lon[-1] < 360
    assert grid.lat_edges[0] == -90 and grid.lat_edges[-1] == 90
    assert grid.is_global


@pytest.mark.parametrize("shape", [(1, 64), (32,), (32.5, 64), "32x64"])
def test_bad_target_shapes_are_refused(shape):
    with pytest.raises(ValueError, match="grid must"):
        regrid.target_grid(shape)


def test_source_grid_recognises_global_pole_including_and_regional_grids():
    cell_centred = regrid.source_grid(LAT_1DEG, LON_1DEG)
    with_poles = regrid.source_grid(np.linspace(-90, 90, 19), np.arange(0, 360, 10.0))  # ERA5 style
    regional = regrid.source_grid(np.arange(15, 61, 1.25), np.arange(225, 316, 1.875))
    assert cell_centred.is_global and with_poles.is_global and not regional.is_global
    assert cell_centred.lat_edges[0] == -90 and cell_centred.lon_edges[0] == pytest.approx(0.0)
    assert regional.lat_edges[0] == pytest.approx(15 - 0.625)


def test_region_across_the_zero_meridian_is_refused():
    lon = np.arange(-10, 31, 1.0) % 360
    with pytest.raises(ValueError, match="crossing the 0 deg meridian"):
        regrid.source_grid(np.arange(30, 60, 1.0), np.sort(lon))


def test_regional_source_needs_opt_in_and_then_gets_a_grid_inside_its_range():
    source = regrid.source_grid(np.arange(15, 61, 1.25), np.arange(225, 316, 1.875))
    with pytest.raises(ValueError, match="allow_regional=True"):
        regrid.target_grid((8, 12), source)
    grid = regrid.target_grid((8, 12), source, allow_regional=True)
    assert grid.shape == (8, 12) and not grid.is_global
    assert 15 < grid.lat[0] < grid.lat[-1] < 60 and 225 < grid.lon[0] < grid.lon[-1] < 315


def test_bilinear_is_exact_for_a_linear_field_away_from_poles_and_seam():
    lat, lon = LAT_1DEG, LON_1DEG
    values = 2.0 * lat[:, None] + 0.1 * lon[None, :]
    source = regrid.source_grid(lat, lon)
    target = regrid.target_grid((32, 64), source)
    out = regrid.regrid(field(values, lat, lon), source, target, "bilinear")
    expected = 2.0 * target.lat[:, None] + 0.1 * target.lon[None, :]
    inside = (target.lon >= lon[0]) & (target.lon <= lon[-1])
    assert out.dtype == np.float32 and out.dims == ("time", "lat", "lon")
    np.testing.assert_allclose(out.values[0][:, inside], expected[:, inside], atol=1e-4)


def test_bilinear_wraps_around_the_seam():
    lon = np.arange(0, 360, 10.0)
    lat = np.arange(-85, 90, 10.0)
    values = np.broadcast_to(np.cos(np.deg2rad(lon)), (lat.size, lon.size))
    source = regrid.source_grid(lat, lon)
    out = regrid.regrid(field(values, lat, lon), source, regrid.target_grid((18, 72), source), "bilinear")
    at_355 = out.sel(lon=355.0).values[0]
    np.testing.assert_allclose(at_355, (np.cos(np.deg2rad(350)) + 1.0) / 2, rtol=1e-6)


def test_bilinear_fills_beyond_the_last_row_with_the_zonal_mean_at_the_pole():
    lat = np.arange(-88.75, 90, 2.5)  # outermost centres at +-88.75
    lon = np.arange(0, 360, 2.5)
    values = np.broadcast_to(lat[:, None], (lat.size, lon.size))  # zonally constant
    source = regrid.source_grid(lat, lon)
    target = regrid.target_grid((128, 256), source)  # centres at +-89.30, beyond the source rows
    out = regrid.regrid(field(values, lat, lon), source, target, "bilinear").values[0]
    np.testing.assert_allclose(out[-1], 88.75, rtol=1e-6)
    np.testing.assert_allclose(out[0], -88.75, rtol=1e-6)


@pytest.mark.parametrize("method", ["bilinear", "conservative"])
def test_a_constant_stays_constant_everywhere(method):
    source = regrid.source_grid(LAT_1DEG, LON_1DEG)
    out = regrid.regrid(field(np.full((180, 360), 7.0), LAT_1DEG, LON_1DEG), source,
                        regrid.target_grid((32, 64), source), method)
    np.testing.assert_allclose(out.values, 7.0, rtol=1e-6)


def test_conservative_keeps_the_area_weighted_global_mean():
    rng = np.random.default_rng(0)
    values = rng.gamma(0.5, 2.0, size=(180, 360))
    source = regrid.source_grid(LAT_1DEG, LON_1DEG)
    target = regrid.target_grid((32, 64), source)
    out = regrid.regrid(field(values, LAT_1DEG, LON_1DEG), source, target, "conservative").values[0]
    src_w = np.cos(np.deg2rad(LAT_1DEG))
    tgt_w = np.diff(np.sin(np.deg2rad(target.lat_edges)))
    src_mean = (values * src_w[:, None]).sum() / (src_w.sum() * 360)
    tgt_mean = (out * tgt_w[:, None]).sum() / (tgt_w.sum() * 64)
    assert tgt_mean == pytest.approx(src_mean, rel=1e-5)


def test_conservative_coarsening_by_two_is_the_area_weighted_block_mean():
    """Target cell (0, 0) spans lat -90..-88 and lon -1..1, i.e. source rows 0-1, columns 359 and 0."""
    rng = np.random.default_rng(1)
    values = rng.normal(size=(180, 360))
    source = regrid.source_grid(LAT_1DEG, LON_1DEG)
    target = regrid.target_grid((90, 180), source)
    out = regrid.regrid(field(values, LAT_1DEG, LON_1DEG), source, target, "conservative").values[0]
    row_w = np.diff(np.sin(np.deg2rad([-90.0, -89.0, -88.0])))
    block = values[:2][:, [359, 0]]
    expected = (block * row_w[:, None]).sum() / (row_w.sum() * 2)
    assert out[0, 0] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("method", ["bilinear", "conservative"])
@pytest.mark.parametrize("shape", [(32, 64), (256, 512)])
def test_precipitation_stays_non_negative_and_within_the_source_range(method, shape):
    rng = np.random.default_rng(2)
    values = np.where(rng.random((180, 360)) < 0.7, 0.0, rng.exponential(3.0, (180, 360)))
    source = regrid.source_grid(LAT_1DEG, LON_1DEG)
    target = regrid.target_grid(shape, source)
    raw = regrid.regrid(field(values, LAT_1DEG, LON_1DEG), source, target, method)
    out = regrid.regrid(field(values, LAT_1DEG, LON_1DEG), source, target, method, non_negative=True)
    assert float(raw.min()) > -1e-6 and float(raw.max()) <= values.max() * (1 + 1e-6)  # convex up to rounding
    assert float(out.min()) >= 0.0
    np.testing.assert_allclose(out.values, np.maximum(raw.values, 0.0))


def test_regrid_keeps_leading_dims_and_works_lazily():
    lat, lon = LAT_1DEG[::10], LON_1DEG[::10]
    da = xr.DataArray(np.ones((3, 2, lat.size, lon.size), np.float32), dims=("time", "level", "lat", "lon"),
                      coords={"lat": lat, "lon": lon, "level": [500, 850]}).chunk({"time": 1})
    source = regrid.source_grid(lat, lon)
    for method in ("bilinear", "conservative"):
        out = regrid.regrid(da, source, regrid.target_grid((4, 8), source), method)
        assert out.dims == da.dims and out.shape == (3, 2, 4, 8)
        assert out.compute().dtype == np.float32


def test_auto_picks_conservative_for_coarsening_and_bilinear_for_refining():
    fine = regrid.source_grid(LAT_1DEG, LON_1DEG)
    coarse = regrid.source_grid(np.arange(-87.5, 90, 5.0), np.arange(0, 360, 5.0))
    assert regrid.choose_method(fine, regrid.target_grid((32, 64), fine)) == "conservative"
    assert regrid.choose_method(coarse, regrid.target_grid((128, 256), coarse)) == "bilinear"
    with pytest.raises(ValueError, match="valid: \\['auto', 'bilinear', 'conservative'\\]"):
        regrid.choose_method(fine, fine, "nearest")


def test_regularity_tolerates_gaussian_like_spacing_but_not_stretched_grids():
    gaussian_like = np.degrees(np.arcsin(np.polynomial.legendre.leggauss(48)[0]))
    assert regrid.is_regular(regrid.source_grid(gaussian_like, np.arange(0, 360, 3.75)))
    stretched = np.concatenate([np.arange(-89, 0, 2.0), np.arange(0.5, 90, 1.0)])
    assert not regrid.is_regular(regrid.source_grid(stretched, np.arange(0, 360, 3.75)))
