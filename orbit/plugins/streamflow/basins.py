"""`BasinSet`: daily drivers, discharge and static attributes of many basins on one date axis, the
common form of the CAMELS-US reader and the synthetic generator, and the period checks every run
makes before it trains."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class BasinSet:
    """drivers (N_basin, N_day, D) float32; flow (N_basin, N_day) float64 mm/day, NaN = missing;
    static (N_basin, S) float32; dates (N_day,) datetime64[D], consecutive days. `truth`: per-basin
    states of the generator (synthetic data only), e.g. {"melt": (N_basin, N_day)}."""

    basins: list[str]
    dates: np.ndarray
    drivers: np.ndarray
    driver_names: list[str]
    flow: np.ndarray
    static: np.ndarray
    static_names: list[str]
    truth: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n, t = len(self.basins), len(self.dates)
        if self.drivers.shape != (n, t, len(self.driver_names)) or self.flow.shape != (n, t) \
                or self.static.shape != (n, len(self.static_names)):
            raise ValueError(f"inconsistent basin set: {n} basins, {t} days, drivers {self.drivers.shape}, flow "
                             f"{self.flow.shape}, static {self.static.shape}")
        if t > 1 and not (np.diff(self.dates) == np.timedelta64(1, "D")).all():
            raise ValueError("the date axis must be consecutive days")

    def day_index(self, date: str | np.datetime64) -> int:
        return int((np.datetime64(date, "D") - self.dates[0]) // np.timedelta64(1, "D"))

    def subset(self, rows: np.ndarray) -> "BasinSet":
        rows = np.asarray(rows)
        return BasinSet([self.basins[i] for i in rows], self.dates, self.drivers[rows], self.driver_names,
                        self.flow[rows], self.static[rows], self.static_names,
                        {k: v[rows] for k, v in self.truth.items()})


def parse_period(period: list[str], name: str) -> tuple[np.datetime64, np.datetime64]:
    """A [first, last] pair of ISO dates (inclusive), or a ValueError naming the key."""
    if len(period) != 2:
        raise ValueError(f"data.{name} must be [first, last] ISO dates, got {period!r}")
    try:
        first, last = (np.datetime64(str(p), "D") for p in period)
    except ValueError:
        raise ValueError(f"data.{name}={period!r}: dates must look like 2001-10-01") from None
    if last < first:
        raise ValueError(f"data.{name}={period!r}: the last day is before the first")
    return first, last


def check_periods(data: BasinSet, periods: dict[str, tuple[np.datetime64, np.datetime64]], seq_len: int,
                  horizon: int) -> None:
    """Every period must be disjoint from the others, leave `seq_len` days of drivers before its first
    target and `horizon` days of drivers after, and hold observed flow in every basin scored on it."""
    spans = sorted(periods.items(), key=lambda kv: kv[1][0])
    for (a, (_, a_last)), (b, (b_first, _)) in zip(spans, spans[1:]):
        if b_first <= a_last:
            raise ValueError(f"periods {a} and {b} overlap ({a} ends {a_last}, {b} starts {b_first}); they must be "
                             f"disjoint")
    first_ok = data.dates[0] + np.timedelta64(seq_len, "D")
    last_ok = data.dates[-1] - np.timedelta64(horizon - 1, "D")
    for name, (first, last) in periods.items():
        if first < first_ok or last > last_ok:
            raise ValueError(f"data.{name}_period {first}..{last} lies outside the data: drivers run "
                             f"{data.dates[0]}..{data.dates[-1]}, so with seq_len={seq_len} and horizon={horizon} "
                             f"the targets may run {first_ok}..{last_ok}")
        lo, hi = data.day_index(first), data.day_index(last) + 1
        empty = [b for b, q in zip(data.basins, data.flow[:, lo:hi]) if not np.isfinite(q).any()]
        if empty:
            raise ValueError(f"basin(s) {empty} have no observed flow in the {name} period {first}..{last} "
                             f"(all missing); choose another period or drop the basin(s)")
