"""Write a large WeatherBench2-layout zarr store (an ERA5 stand-in) to measure `orbit data convert` on.

Layout as WB2's ERA5 stores: ERA5 long names, latitude 90 -> -90 with the poles, longitude 0..360,
hPa levels, one time step per chunk, 6-hourly. Values are smooth fields with travelling waves and noise
(float32), generated chunk by chunk with dask, so writing takes little memory.

    python benchmarks/wb2_like_store.py /tmp/wb2_like.zarr --years 1979 1988 --grid 121x240
"""
from __future__ import annotations

import argparse

import dask.array as dsa
import numpy as np
import pandas as pd
import xarray as xr

LEVELS = (500, 850, 1000)


def field(times: np.ndarray, lat: np.ndarray, lon: np.ndarray, base: float, amplitude: float, levels=None):
    """A lazy (time, [level,] lat, lon) float32 field, one time step per chunk."""
    hours = ((times - times[0]) / np.timedelta64(1, "h")).astype(np.float64)
    nlev = 1 if levels is None else len(levels)

    def block(block_info=None):
        (t0, t1) = block_info[None]["array-location"][0]
        t = hours[t0:t1, None, None, None]
        phase = np.deg2rad(lon)[None, None, None, :] * 4 - t * 2 * np.pi / 96.0
        shape = np.cos(np.deg2rad(lat))[None, None, :, None]
        scale = np.arange(1, nlev + 1)[None, :, None, None] / nlev
        rng = np.random.default_rng(t0)
        out = base + amplitude * scale * shape * np.cos(phase) + rng.normal(0, 0.1, (t1 - t0, nlev, lat.size, lon.size))
        return out.astype(np.float32) if levels is not None else out[:, 0].astype(np.float32)

    shape = (times.size, *(() if levels is None else (nlev,)), lat.size, lon.size)
    chunks = (1, *(() if levels is None else (nlev,)), lat.size, lon.size)
    return dsa.map_blocks(block, chunks=dsa.core.normalize_chunks(chunks, shape), dtype=np.float32,
                          meta=np.empty((0,) * len(shape), np.float32))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path")
    parser.add_argument("--years", nargs=2, type=int, default=[1979, 1988])
    parser.add_argument("--grid", default="121x240", help="lat x lon with poles, e.g. 121x240 (WB2 1.5 deg)")
    args = parser.parse_args(argv)
    height, width = (int(v) for v in args.grid.split("x"))
    times = pd.date_range(f"{args.years[0]}-01-01", f"{args.years[1]}-12-31T18:00", freq="6h").values
    lat, lon = np.linspace(90.0, -90.0, height), np.arange(width) * 360.0 / width
    dims2, dims3 = ("time", "latitude", "longitude"), ("time", "level", "latitude", "longitude")
    ds = xr.Dataset(
        {
            "2m_temperature": (dims2, field(times, lat, lon, 280.0, 20.0), {"units": "K"}),
            "temperature": (dims3, field(times, lat, lon, 260.0, 15.0, LEVELS), {"units": "K"}),
            "geopotential": (dims3, field(times, lat, lon, 5e4, 3e3, LEVELS), {"units": "m**2 s**-2"}),
            "geopotential_at_surface": (("latitude", "longitude"), np.zeros((height, width)), {"units": "m**2 s**-2"}),
        },
        coords={"time": times, "latitude": lat, "longitude": lon, "level": np.array(LEVELS, np.int64)},
    )
    ds.to_zarr(args.path, mode="w", zarr_format=2, consolidated=True)
    print(f"{args.path}: {times.size} steps, {ds.nbytes / 2**30:.1f} GiB of float32")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
