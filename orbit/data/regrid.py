"""Regridding of canonical fields onto a regular, cell-centred lat-lon target grid.

Target grids (:func:`target_grid`):

- global ``(H, W)``: lat centres ``-90 + (i + 1/2) 180/H`` (ascending, no pole points), lon centres
  ``j 360/W`` starting at 0 (the WeatherBench convention, e.g. 32x64 = 5.625 deg);
- regional, when the source does not cover the globe (iris's ``A1B_north_america.nc``, the polar
  patches of ``esmvaltool-sample-data``): an ``(H, W)`` grid spanning the source's own range of
  cell centres, so every target point lies inside the data and nothing is extrapolated. A regional
  source is refused unless the caller opts in with ``allow_regional=True``: silently producing a
  regional store from what the user believed was a global file would hide a truncated download.
  A region that straddles 0 deg longitude is refused: a store needs ascending lon in [0, 360).

Methods (:func:`regrid`):

- ``bilinear``: ``xarray.interp`` after padding a wrap-around column on each side of a global
  source (periodic longitude) and, for a global source without pole points, a pole row holding the
  zonal mean of the nearest row (a scalar field has one value at the pole);
- ``conservative``: first-order area-weighted remapping. On rectilinear lat-lon grids the overlap
  area of two cells factorises into a latitude part (difference of sin(lat) over the overlap) and a
  longitude part (overlapping degrees, modulo 360), so the remap is two small weight matrices
  applied with ``xarray.dot``. This is exact for any ratio of resolutions (no need for factors that
  divide, as with ``coarsen``) and preserves area means; xESMF would do the same but needs ESMF,
  which pip cannot install. Source cell edges are the midpoints between centres. Cross-checked
  against xarray-regrid on real files (``benchmarks/regrid_crosscheck.py``): bilinear agrees to float32
  rounding; conservative agrees for integer ratios and differs by ~1e-3 of the field's std otherwise,
  where xarray-regrid's latitude weighting moves the area mean (3e-4 K) and ours keeps it (1e-7 K),
  so ORBIT keeps its own, one path, with no extra dependency.
- ``auto`` (default): conservative when the target is at least as coarse as the source in both
  directions (the right choice for coarsening), bilinear otherwise.

Both methods form convex combinations of source values, so constants stay constant and results
stay within the source range - up to rounding: scipy evaluates linear interpolation as
``v0 + t (v1 - v0)``, which can undershoot 0 by ~1e-16, so ``non_negative=True`` (used for
precipitation and humidity) clips the result at 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

METHODS = ("auto", "bilinear", "conservative")
REGULAR_RTOL = 0.01  # spacing may vary by 1 % and the grid still counts as regular (Gaussian grids do)


@dataclass(frozen=True)
class Grid:
    """A rectilinear lat-lon grid: ascending centres ``lat (H,)``, ``lon (W,)`` in [0, 360) and
    their cell edges ``lat_edges (H+1,)``, ``lon_edges (W+1,)``.

    ``periodic``: longitudes go round the globe; ``lat_global``: the rows reach both poles.
    """

    lat: np.ndarray
    lon: np.ndarray
    lat_edges: np.ndarray
    lon_edges: np.ndarray
    periodic: bool
    lat_global: bool

    @property
    def shape(self) -> tuple[int, int]:
        return self.lat.size, self.lon.size

    @property
    def is_global(self) -> bool:
        return self.periodic and self.lat_global

    def describe(self) -> str:
        return (f"{self.lat.size}x{self.lon.size} grid, lat {self.lat[0]:.3f}..{self.lat[-1]:.3f}, "
                f"lon {self.lon[0]:.3f}..{self.lon[-1]:.3f}")


# --------------------------------------------------------------------------- grids
def source_grid(lat: np.ndarray, lon: np.ndarray) -> Grid:
    """Describe a source's grid from its ascending cell centres (edges at the midpoints).

    Raises ValueError for fewer than two points along a dim, since no spacing can be inferred.
    """
    lat, lon = np.asarray(lat, np.float64), np.asarray(lon, np.float64)
    for name, values in (("lat", lat), ("lon", lon)):
        if values.size < 2:
            raise ValueError(f"the source has {values.size} '{name}' point(s) ({values}); regridding "
                             f"needs at least 2 to know the grid spacing")
    dlat, dlon = np.diff(lat), np.diff(lon)
    lat_global = bool(lat[0] + 90 <= dlat[0] + 1e-6 and 90 - lat[-1] <= dlat[-1] + 1e-6)
    gaps = np.append(dlon, 360.0 - (lon[-1] - lon[0]))  # the last one closes the circle
    wide = gaps > 1.5 * np.median(gaps)
    periodic = not wide.any()
    if wide[:-1].any():
        k = int(np.argmax(wide[:-1]))
        raise ValueError(f"the source longitudes have a gap of {dlon[k]:.3f} deg between {lon[k]:.3f} and "
                         f"{lon[k + 1]:.3f} (after wrapping to [0, 360)); a region crossing the 0 deg "
                         f"meridian cannot be stored with ascending longitudes in [0, 360) - cut it at 0 deg")
    lat_mid = (lat[1:] + lat[:-1]) / 2
    lat_edges = np.concatenate([[lat[0] - dlat[0] / 2], lat_mid, [lat[-1] + dlat[-1] / 2]])
    if lat_global:
        lat_edges[0], lat_edges[-1] = -90.0, 90.0
    lat_edges = np.clip(lat_edges, -90.0, 90.0)
    lon_mid = (lon[1:] + lon[:-1]) / 2
    if periodic:
        first = (lon[0] + lon[-1] - 360.0) / 2
        lon_edges = np.concatenate([[first], lon_mid, [first + 360.0]])
    else:
        lon_edges = np.concatenate([[lon[0] - dlon[0] / 2], lon_mid, [lon[-1] + dlon[-1] / 2]])
    return Grid(lat, lon, lat_edges, lon_edges, periodic, lat_global)


def same_grid(a: Grid, b: Grid) -> bool:
    """The same cell centres (to 1e-6 deg), i.e. nothing to regrid."""
    return a.shape == b.shape and np.allclose(a.lat, b.lat, atol=1e-6) and np.allclose(a.lon, b.lon, atol=1e-6)


def is_regular(grid: Grid) -> bool:
    """Equally spaced in lat and in lon within :data:`REGULAR_RTOL` of the spacing."""
    return all(np.allclose(np.diff(c), np.diff(c).mean(), rtol=REGULAR_RTOL, atol=0)
               for c in (grid.lat, grid.lon))


def target_grid(shape: tuple[int, int], source: Grid | None = None, *, allow_regional: bool = False) -> Grid:
    """The ``(H, W)`` target grid for ``source``: global, or regional over the source's range.

    ``source=None`` gives the global grid. Raises ValueError for a bad shape, or for a regional
    source without ``allow_regional=True``.
    """
    height, width = _check_shape(shape)
    if source is not None:
        check_coverage(source, allow_regional, f"a global {height}x{width} grid",
                       f"a {height}x{width} grid over the source's own region")
    global_lat = source is None or source.lat_global
    global_lon = source is None or source.periodic
    if global_lat:
        lat_edges = np.linspace(-90.0, 90.0, height + 1)
    else:
        lat_edges = np.linspace(source.lat[0], source.lat[-1], height + 1)
    if global_lon:
        lon_edges = (np.arange(width + 1) - 0.5) * 360.0 / width
        lon = np.arange(width) * 360.0 / width
    else:
        lon_edges = np.linspace(source.lon[0], source.lon[-1], width + 1)
        lon = (lon_edges[1:] + lon_edges[:-1]) / 2
    lat = (lat_edges[1:] + lat_edges[:-1]) / 2
    return Grid(lat, lon, lat_edges, lon_edges, global_lon, global_lat)


def check_coverage(source: Grid, allow_regional: bool, wanted: str, instead: str) -> None:
    """ValueError unless ``source`` is global or the caller allowed a regional result."""
    if not source.is_global and not allow_regional:
        raise ValueError(f"the source covers only lat {source.lat[0]:.3f}..{source.lat[-1]:.3f}, lon "
                         f"{source.lon[0]:.3f}..{source.lon[-1]:.3f} (not the whole globe), so {wanted} "
                         f"cannot be produced from it; pass allow_regional=True (CLI: --regional) to make "
                         f"{instead}")


def _check_shape(shape) -> tuple[int, int]:
    try:
        height, width = (int(n) for n in shape)
    except (TypeError, ValueError):
        raise ValueError(f"grid must be (H, W), e.g. (32, 64), got {shape!r}") from None
    if height < 2 or width < 2 or (height, width) != tuple(shape):
        raise ValueError(f"grid must be two integers >= 2 as (H, W), e.g. (32, 64), got {shape!r}")
    return height, width


# --------------------------------------------------------------------------- regridding
def choose_method(source: Grid, target: Grid, method: str = "auto") -> str:
    """Resolve ``auto``: conservative when coarsening in both directions, bilinear otherwise."""
    if method not in METHODS:
        raise ValueError(f"unknown regridding method {method!r}; valid: {list(METHODS)}")
    if method != "auto":
        return method
    coarser = (np.diff(target.lat_edges).mean() >= np.diff(source.lat_edges).mean()
               and np.diff(target.lon_edges).mean() >= np.diff(source.lon_edges).mean())
    return "conservative" if coarser else "bilinear"


def regrid(da: xr.DataArray, source: Grid, target: Grid, method: str = "auto", *,
           non_negative: bool = False) -> xr.DataArray:
    """Regrid ``da: (..., lat, lon)`` from ``source`` onto ``target``; float32, same leading dims.

    ``non_negative``: clip rounding undershoots below 0 (for fields that cannot be negative).
    """
    method = choose_method(source, target, method)
    if da.chunks is not None:
        da = da.chunk({"lat": -1, "lon": -1})
    out = _bilinear(da, source, target) if method == "bilinear" else _conservative(da, source, target)
    if non_negative:
        out = out.clip(min=0.0)
    out = out.astype(np.float32).transpose(*da.dims)
    out.attrs = dict(da.attrs)
    return out.rename(da.name)


def _bilinear(da: xr.DataArray, source: Grid, target: Grid) -> xr.DataArray:
    # float64 in: with dask, interp declares the input dtype but returns float64, which would make
    # the later cast to float32 a silent no-op
    da = da.astype(np.float64).assign_coords(lat=source.lat, lon=source.lon)
    if source.lat_global:
        rows = [da]
        if source.lat[0] > -90.0:
            rows.insert(0, _pole_row(da, 0, -90.0))
        if source.lat[-1] < 90.0:
            rows.append(_pole_row(da, -1, 90.0))
        da = xr.concat(rows, dim="lat")
    if source.periodic:
        left = da.isel(lon=[-1]).assign_coords(lon=[source.lon[-1] - 360.0])
        right = da.isel(lon=[0]).assign_coords(lon=[source.lon[0] + 360.0])
        da = xr.concat([left, da, right], dim="lon")
    return da.interp(lat=target.lat, lon=target.lon, method="linear")


def _pole_row(da: xr.DataArray, index: int, pole: float) -> xr.DataArray:
    """A row at latitude ``pole`` holding the zonal mean of row ``index``."""
    row = da.isel(lat=[index])
    return row.mean("lon").expand_dims(lon=da["lon"]).transpose(*da.dims).assign_coords(lat=[pole])


def _overlaps(out_edges: np.ndarray, in_edges: np.ndarray, period: float | None = None) -> np.ndarray:
    """Length of the overlap of every output with every input interval: ``(n_out, n_in)``.

    With a ``period`` the inputs are also shifted by +-period (longitude wrap-around).
    """
    shifts = (0.0,) if period is None else (-period, 0.0, period)
    total = np.zeros((out_edges.size - 1, in_edges.size - 1))
    for shift in shifts:
        lo = np.maximum(out_edges[:-1, None], in_edges[None, :-1] + shift)
        hi = np.minimum(out_edges[1:, None], in_edges[None, 1:] + shift)
        total += np.clip(hi - lo, 0.0, None)
    return total


def _normalised(weights: np.ndarray, what: str) -> np.ndarray:
    sums = weights.sum(axis=1, keepdims=True)
    if np.any(sums <= 0):
        raise ValueError(f"{int((sums <= 0).sum())} target {what} cell(s) do not overlap the source grid")
    return weights / sums


def _conservative(da: xr.DataArray, source: Grid, target: Grid) -> xr.DataArray:
    # the area of a lat-lon cell is proportional to d(sin lat) x d(lon)
    sin_target, sin_source = np.sin(np.deg2rad(target.lat_edges)), np.sin(np.deg2rad(source.lat_edges))
    w_lat = _normalised(_overlaps(sin_target, sin_source), "latitude")
    w_lon = _normalised(_overlaps(target.lon_edges, source.lon_edges, 360.0 if source.periodic else None),
                        "longitude")
    w_lat = xr.DataArray(w_lat, dims=("lat_out", "lat"))
    w_lon = xr.DataArray(w_lon, dims=("lon_out", "lon"))
    # two contractions (lon, then lat): a single three-operand einsum would loop over all index pairs
    out = xr.dot(w_lat, xr.dot(da.drop_vars(["lat", "lon"]), w_lon, dim="lon"), dim="lat")
    return out.rename(lat_out="lat", lon_out="lon").assign_coords(lat=target.lat, lon=target.lon)
