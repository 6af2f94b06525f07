"""CAMELS-US reader (Newman et al. 2015; Addor et al. 2017) for the directory layout of a CAMELS
download, as NeuralHydrology reads it (`datasetzoo/camelsus.py`):

    <root>/basin_mean_forcing/<source>/**/<gauge>_lump_*forcing_leap.txt
        line 1 latitude, line 2 elevation (m), line 3 area (m^2), line 4 the header
        `Year Mnth Day Hr dayl(s) prcp(mm/day) srad(W/m2) swe(mm) tmax(C) tmin(C) vp(Pa)`
    <root>/usgs_streamflow/**/<gauge>_streamflow_qc.txt
        `gauge year month day Q(cfs) flag`; -999 (any negative value) = missing
    <root>/camels_attributes_v2.0/camels_*.txt   `;`-separated, one row per gauge_id

Discharge is converted from cubic feet per second to mm/day over the basin area of the forcing file:
``q_mm = q_cfs * 0.3048^3 m^3 * 86400 s/day * 1000 mm/m / area_m^2``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .basins import BasinSet

FORCING_COLUMNS = ("dayl", "prcp", "srad", "swe", "tmax", "tmin", "vp")
CFS_TO_M3S = 0.3048 ** 3


def _find(root: Path, folder: str, pattern: str, what: str, basin: str) -> Path:
    hits = sorted((root / folder).rglob(pattern))
    if not hits:
        available = sorted(p.name.split("_")[0] for p in (root / folder).rglob("*.txt"))
        raise FileNotFoundError(f"basin {basin!r}: no {what} file {pattern!r} under {str(root / folder)!r}; "
                                f"basins with files there: {available[:20]}{' ...' if len(available) > 20 else ''}")
    return hits[0]


def read_forcing(root: Path, basin: str, source: str = "daymet") -> tuple[pd.DataFrame, float]:
    """(daily forcing indexed by date, basin area in m^2)."""
    path = _find(root, f"basin_mean_forcing/{source}", f"{basin}_lump_*forcing_leap.txt", f"{source} forcing", basin)
    with open(path) as handle:
        lines = [next(handle) for _ in range(3)]
    area = float(lines[2])
    table = pd.read_csv(path, sep=r"\s+", skiprows=4, header=None,
                        names=["year", "month", "day", "hour", *FORCING_COLUMNS])
    table.index = pd.to_datetime(table[["year", "month", "day"]])
    return table[list(FORCING_COLUMNS)], area


def read_streamflow(root: Path, basin: str, area_m2: float) -> pd.Series:
    """Daily discharge in mm/day (NaN where USGS reports -999)."""
    path = _find(root, "usgs_streamflow", f"{basin}_streamflow_qc.txt", "streamflow", basin)
    table = pd.read_csv(path, sep=r"\s+", header=None, names=["gauge", "year", "month", "day", "q", "flag"],
                        dtype={"gauge": str})
    q = table["q"].astype(np.float64).where(table["q"] >= 0)
    q.index = pd.to_datetime(table[["year", "month", "day"]])
    return q * CFS_TO_M3S * 86400.0 * 1000.0 / area_m2


def read_attributes(root: Path, basins: list[str], names: list[str]) -> np.ndarray:
    """(N_basin, S) float32 of the numeric attributes `names` from camels_attributes_v2.0/camels_*.txt."""
    folder = root / "camels_attributes_v2.0"
    tables = [pd.read_csv(p, sep=";", dtype={"gauge_id": str}).set_index("gauge_id")
              for p in sorted(folder.glob("camels_*.txt"))]
    if not tables:
        raise FileNotFoundError(f"no camels_*.txt attribute tables under {str(folder)!r}")
    table = pd.concat(tables, axis=1)
    missing = [n for n in names if n not in table.columns]
    if missing:
        raise ValueError(f"static attribute(s) {missing} not in the CAMELS tables; numeric columns: "
                         f"{sorted(table.select_dtypes('number').columns)}")
    absent = [b for b in basins if b not in table.index]
    if absent:
        raise ValueError(f"basin(s) {absent} have no row in the CAMELS attribute tables under {str(folder)!r}")
    values = table.loc[basins, names].apply(pd.to_numeric, errors="coerce")
    bad = values.columns[values.isna().any()].tolist()
    if bad:
        raise ValueError(f"static attribute(s) {bad} are missing (NA) for some of the basins {basins}; drop them "
                         f"from data.static")
    return values.to_numpy(np.float32)


def read_camels_us(root: str | Path, basins: list[str], drivers: list[str], static: list[str],
                   source: str = "daymet") -> BasinSet:
    """The basins' drivers, discharge (mm/day) and static attributes on the dates of the forcing files
    they share; discharge is NaN where not observed."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data.root={str(root)!r} is not a directory; give a CAMELS-US root holding "
                                f"basin_mean_forcing/, usgs_streamflow/ and camels_attributes_v2.0/")
    if not basins:
        raise ValueError("data.basins is empty; list CAMELS gauge ids such as ['01022500']")
    unknown = [d for d in drivers if d not in FORCING_COLUMNS]
    if unknown:
        raise ValueError(f"driver(s) {unknown} are not CAMELS forcing columns; valid: {list(FORCING_COLUMNS)}")
    forcings, flows = [], []
    for basin in basins:
        forcing, area = read_forcing(root, basin, source)
        forcings.append(forcing)
        flows.append(read_streamflow(root, basin, area))
    start = max(f.index[0] for f in forcings)
    end = min(f.index[-1] for f in forcings)
    dates = pd.date_range(start, end, freq="D")
    x = np.stack([f.reindex(dates)[drivers].to_numpy(np.float32) for f in forcings])
    if np.isnan(x).any():
        rows = [basins[i] for i in np.unique(np.nonzero(np.isnan(x))[0])]
        raise ValueError(f"basin(s) {rows}: the forcing files have gaps between {start.date()} and {end.date()}")
    q = np.stack([f.reindex(dates).to_numpy(np.float64) for f in flows])
    return BasinSet(list(basins), dates.values.astype("datetime64[D]"), x, list(drivers), q,
                    read_attributes(root, basins, list(static)), list(static))
