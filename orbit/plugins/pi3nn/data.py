"""Tables for the PI3NN plug-in and its benchmark: a checked CSV reader (header x0..x{d-1},y), seeded
synthetic problems (heteroscedastic 1-D with known quantiles; the paper's 10-D cubic OOD case),
random splits and train-only standardisation."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import norm


def read_table(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(x (N, D), y (N,)) float64 from a CSV with header x0..x{D-1},y; clear errors for a missing file,
    a missing `y` column, non-numeric or NaN cells, too few rows and a constant target."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV {str(path)!r} does not exist; give a table with header x0..x{{d-1}},y")
    with open(path, newline="") as handle:
        header = [h.strip() for h in next(csv.reader(handle), [])]
    if "y" not in header:
        raise ValueError(f"{str(path)!r}: no 'y' column in the header {header}; the target column must be named "
                         f"'y' and the inputs x0..x{{d-1}}")
    expected = [f"x{i}" for i in range(len(header) - 1)] + ["y"]
    if header != expected:
        raise ValueError(f"{str(path)!r}: header {header} is not the expected {expected} (inputs x0..x{{d-1}}, "
                         f"then the target y)")
    try:
        table = np.genfromtxt(path, delimiter=",", skip_header=1, dtype=np.float64, ndmin=2, invalid_raise=True)
    except ValueError as err:
        raise ValueError(f"{str(path)!r}: rows of unequal length or unreadable ({err})") from None
    if table.size == 0 or table.shape[1] != len(header):
        raise ValueError(f"{str(path)!r}: expected {len(header)} columns of numbers, got shape {table.shape}")
    check_table(table[:, :-1], table[:, -1], str(path))
    return table[:, :-1], table[:, -1]


def check_table(x: np.ndarray, y: np.ndarray, source: str = "table") -> None:
    bad = np.flatnonzero(~np.isfinite(x).all(1) | ~np.isfinite(y))
    if len(bad):
        rows = ", ".join(str(int(r) + 2) for r in bad[:10]) + (", ..." if len(bad) > 10 else "")
        raise ValueError(f"{source}: {len(bad)} row(s) hold NaN, Inf or empty cells (file lines {rows}); drop or "
                         f"impute them first: every value must be a finite number")
    if len(y) < 20:
        raise ValueError(f"{source}: {len(y)} rows are too few for train/validation/test splits; need >= 20")
    if np.ptp(y) == 0:
        raise ValueError(f"{source}: the target y is constant ({y[0]!r} in all {len(y)} rows); a prediction "
                         f"interval needs a target that varies")


def heteroscedastic(n: int, seed: int, dims: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """x ~ U(-3, 3)^dims, y = sin(x0) + sigma(x0) eps, sigma = 0.1 + 0.2 |x0|, eps ~ N(0, 1)."""
    rng = np.random.default_rng([seed, 31])
    x = rng.uniform(-3.0, 3.0, size=(n, dims))
    return x, np.sin(x[:, 0]) + noise_scale(x) * rng.normal(size=n)


def noise_scale(x: np.ndarray) -> np.ndarray:
    return 0.1 + 0.2 * np.abs(x[:, 0])


def true_interval(x: np.ndarray, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """The exact central gamma interval of the heteroscedastic problem."""
    z = norm.ppf(0.5 + gamma / 2.0)
    return np.sin(x[:, 0]) - z * noise_scale(x), np.sin(x[:, 0]) + z * noise_scale(x)


def cubic(n: int, seed: int, shift: float = 0.0, dims: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """The paper's OOD case: x ~ N(shift, 1)^10, y = sum x_i^3 / 10 + N(0, 1)."""
    rng = np.random.default_rng([seed, 53, int(shift * 100)])
    x = rng.normal(shift, 1.0, size=(n, dims))
    return x, (x ** 3).sum(1) / 10.0 + rng.normal(size=n)


@dataclass
class Split:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    cal: np.ndarray  # held-out calibration rows (empty unless cal_fraction > 0)


def split_rows(n: int, test_fraction: float, val_fraction: float, seed: int, cal_fraction: float = 0.0) -> Split:
    """Random test rows (the protocol's 90/10), then of the remaining rows a validation part (early
    stopping, model choice) and, with cal_fraction > 0, a calibration part that no fit, early stop or
    choice reads: a held-out interval calibration is exact only on rows the networks never saw.
    cal_fraction = 0 gives the same train / validation / test rows as before the calibration part."""
    for name, value in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name}={value} must be in (0, 1)")
    if not 0.0 <= cal_fraction < 1.0 or val_fraction + cal_fraction >= 1.0:
        raise ValueError(f"cal_fraction={cal_fraction} must be in [0, 1) with val_fraction + cal_fraction < 1 "
                         f"(val_fraction={val_fraction})")
    order = np.random.default_rng([seed, 17]).permutation(n)
    n_test = max(1, int(round(n * test_fraction)))
    rest = order[n_test:]
    n_val = max(1, int(round(len(rest) * val_fraction)))
    n_cal = int(round(len(rest) * cal_fraction)) if cal_fraction > 0 else 0
    if cal_fraction > 0 and n_cal < 2:
        raise ValueError(f"cal_fraction={cal_fraction} of {len(rest)} rows leaves {n_cal} calibration rows; need >= 2")
    if len(rest) - n_val - n_cal < 10:
        raise ValueError(f"{n} rows leave {len(rest) - n_val - n_cal} training rows; need >= 10")
    return Split(np.sort(rest[n_val + n_cal:]), np.sort(rest[:n_val]), np.sort(order[:n_test]),
                 np.sort(rest[n_val:n_val + n_cal]))


class Standardized:
    """x, y standardised with the training rows' mean and std only; `xn` (N, D), `yn` (N,) float32."""

    def __init__(self, x: np.ndarray, y: np.ndarray, train: np.ndarray):
        self.x, self.y = np.asarray(x, np.float64), np.asarray(y, np.float64).ravel()
        self.x_mean, self.x_std = self.x[train].mean(0), _safe_std(self.x[train])
        self.y_mean, self.y_std = float(self.y[train].mean()), float(_safe_std(self.y[train]))
        self.xn = ((self.x - self.x_mean) / self.x_std).astype(np.float32)
        self.yn = ((self.y - self.y_mean) / self.y_std).astype(np.float32)

    def scale_x(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, np.float64) - self.x_mean) / self.x_std).astype(np.float32)


def _safe_std(a: np.ndarray):
    std = a.std(0)
    return np.where(std > 0, std, 1.0)
