"""Tabular regression data: a CSV table (header x0..x{d-1},y, e.g. the UCI sets) or a seeded
synthetic set, split once into disjoint train / validation / test rows.

Normalization statistics come from the training rows only, so nothing of the held-out rows leaks
into training or into the baselines.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def read_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(x (N, D), y (N, 1)) float64 from a CSV whose header is x0..x{D-1},y."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data.csv={str(path)!r} does not exist (relative paths are from the working "
                                f"directory); give a CSV with header x0..x{{d-1}},y or data.csv=null for synthetic data")
    with open(path, newline="") as handle:
        header = next(csv.reader(handle))
    expected = [f"x{i}" for i in range(len(header) - 1)] + ["y"]
    if [h.strip() for h in header] != expected:
        raise ValueError(f"{str(path)!r}: header {header} is not the expected {expected}")
    table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2, dtype=np.float64)
    return table[:, :-1], table[:, -1:]


def synthetic(n_samples: int, n_features: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded nonlinear target: a linear part, sines and one interaction, plus Gaussian noise,
    so that a linear baseline leaves something for the network to learn."""
    rng = np.random.default_rng([seed, 7])
    x = rng.normal(size=(n_samples, n_features))
    w = rng.normal(size=n_features) / np.sqrt(n_features)
    y = x @ w + np.sin(2.0 * x[:, 0]) + 0.5 * np.sin(3.0 * x[:, -1])
    if n_features > 1:
        y = y + 0.5 * x[:, 0] * x[:, 1]
    y = y + noise * rng.normal(size=n_samples)
    return x, y[:, None]


@dataclass
class Split:
    """Row indices of the three parts (disjoint, together all rows)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def split_rows(n: int, val_fraction: float, test_fraction: float, seed: int) -> Split:
    """A seeded random split of n rows; each held-out part gets at least one row."""
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"need 0 < val_fraction, test_fraction and val_fraction + test_fraction < 1; "
                         f"got {val_fraction}, {test_fraction}")
    order = np.random.default_rng([seed, 11]).permutation(n)
    n_val, n_test = max(1, round(n * val_fraction)), max(1, round(n * test_fraction))
    if n - n_val - n_test < 1:
        raise ValueError(f"{n} rows leave no training rows after {n_val} validation and {n_test} test rows")
    return Split(np.sort(order[n_val + n_test:]), np.sort(order[:n_val]), np.sort(order[n_val:n_val + n_test]))


class Table:
    """Raw (physical) x, y, the split and the train-only normalization; `xn`, `yn` normalized float32."""

    def __init__(self, x: np.ndarray, y: np.ndarray, split: Split):
        self.x, self.y, self.split = x, y, split
        tx, ty = x[split.train], y[split.train]
        self.x_mean, self.x_std = tx.mean(0), _safe_std(tx)
        self.y_mean, self.y_std = ty.mean(0), _safe_std(ty)
        self.xn = ((x - self.x_mean) / self.x_std).astype(np.float32)
        self.yn = ((y - self.y_mean) / self.y_std).astype(np.float32)

    def physical_y(self, yn: np.ndarray) -> np.ndarray:
        return yn * self.y_std + self.y_mean


def _safe_std(a: np.ndarray) -> np.ndarray:
    std = a.std(0)
    return np.where(std > 0, std, 1.0)  # a constant column stays finite (it carries no information)
