"""Emulator metrics: how much of the outputs' variance an emulator explains."""
from __future__ import annotations

import numpy as np


def r2_score(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Coefficient of determination per column: 1 - sum (y - yhat)^2 / sum (y - mean y)^2; (N, O) -> (O,).

    A constant column (no variance) scores nan rather than an arbitrary number.
    """
    residual = ((true - pred) ** 2).sum(axis=0)
    total = ((true - true.mean(axis=0)) ** 2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, 1.0 - residual / total, np.nan)
