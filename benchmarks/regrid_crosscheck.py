"""Cross-check orbit.data.regrid against xarray-regrid on real files (not an ORBIT dependency).

Compares bilinear and conservative regridding of iris's E1_north_america.nc (regional, 37x49) and
cartopy's HadISST1 (global 1 deg; land/ice filled with 271.35 K so the field has no gaps), and how well
each conservative remap keeps the exact area mean (cell areas from sin(lat) differences). Writes
benchmarks/results/regrid_crosscheck.md.

    pip install --target /tmp/xrr --no-deps xarray-regrid==0.4.2 flox numpy_groupies
    PYTHONPATH=/tmp/xrr python benchmarks/regrid_crosscheck.py
"""
from __future__ import annotations

from pathlib import Path

import cartopy
import iris_sample_data
import numpy as np
import xarray as xr
import xarray_regrid  # noqa: F401 (registers the .regrid accessor)

from orbit.data import readers, regrid

OUT = Path(__file__).parent / "results" / "regrid_crosscheck.md"


def area_mean(values: np.ndarray, grid: regrid.Grid) -> float:
    weights = np.diff(np.sin(np.deg2rad(grid.lat_edges)))[:, None] * np.diff(grid.lon_edges)[None, :]
    return float((values * weights).sum() / weights.sum())


def compare(da: xr.DataArray, shape: tuple[int, int], method: str, regional: bool) -> dict:
    source = regrid.source_grid(da["lat"].values, da["lon"].values)
    target = regrid.target_grid(shape, source, allow_regional=regional)
    ours = regrid.regrid(da, source, target, method).values.astype(np.float64)
    coords = xr.Dataset(coords={"lat": target.lat, "lon": target.lon})
    d = da.astype(np.float64)
    theirs = d.regrid.conservative(coords, latitude_coord="lat") if method == "conservative" else d.regrid.linear(coords)
    theirs = theirs.transpose(*da.dims).values
    diff = np.abs(ours - theirs)
    row = {"shape": shape, "method": method, "max": float(diff.max()), "interior": float(diff[..., 2:-2, 2:-2].max()),
           "std": float(da.std())}
    if method == "conservative" and source.is_global:
        exact = area_mean(da.values[0].astype(np.float64), source)
        row["ours_mean_error"] = area_mean(ours[0], target) - exact
        row["theirs_mean_error"] = area_mean(theirs[0], target) - exact
    return row


def main() -> int:
    e1 = readers.open_cmip6([Path(iris_sample_data.__file__).parent / "sample_data" / "E1_north_america.nc"])
    e1 = e1.fields["t2m"].isel(time=slice(0, 5)).load()
    hadisst = Path(cartopy.__file__).parent / "data" / "netcdf" / "HadISST1_SST_update.nc"
    sst = readers.open_cmip6([hadisst], rename={"sst": "t2m"}).fields["t2m"].load().fillna(271.35)
    cases = [("iris E1_north_america (37x49, regional)", e1, (16, 24), "conservative", True),
             ("iris E1_north_america (37x49, regional)", e1, (74, 98), "bilinear", True),
             ("HadISST1 (180x360, global)", sst, (32, 64), "conservative", False),
             ("HadISST1 (180x360, global)", sst, (90, 180), "conservative", False),
             ("HadISST1 (180x360, global)", sst, (256, 512), "bilinear", False)]
    lines = ["# orbit.data.regrid vs xarray-regrid 0.4.2 on real files", "",
             "Command: `PYTHONPATH=/tmp/xrr python benchmarks/regrid_crosscheck.py` (see its docstring). Values in K.", "",
             "| file | method | target | max abs difference | away from the edge (2 cells) | field std | "
             "area-mean error: ours | xarray-regrid |", "|---|---|---|---|---|---|---|---|"]
    for name, da, shape, method, regional in cases:
        r = compare(da, shape, method, regional)
        errors = (f"{r['ours_mean_error']:+.1e} | {r['theirs_mean_error']:+.1e}" if "ours_mean_error" in r else "- | -")
        lines.append(f"| {name} | {method} | {shape[0]}x{shape[1]} | {r['max']:.2g} | {r['interior']:.2g} | "
                     f"{r['std']:.3g} | {errors} |")
    OUT.write_text("\n".join(lines) + "\n")
    print(OUT.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
