r"""PI3NN step 4 and the interval scores: the math of the plug-in, in NumPy (float64).

PI3NN (Liu, Zhang, Lu, Zhang: "PI3NN: Out-of-distribution-aware prediction intervals from three
neural networks", ICLR 2022; reference code github.com/liusiyan/UQnet) builds a prediction interval
from three networks, each trained with the plain mean squared error:

1. the mean f(x), by  min_f  sum_i (y_i - f(x_i))^2;
2. the upper spread u(x) >= 0, on the training points above the mean only,
       min_u  sum_{i: y_i >= f(x_i)} (u(x_i) - (y_i - f(x_i)))^2     (f fixed);
3. the lower spread l(x) >= 0, on the points below,
       min_l  sum_{i: y_i <  f(x_i)} (l(x_i) - (f(x_i) - y_i))^2     (f fixed);
   (u and l end in sqrt(z^2): positive outputs; they estimate E[y - f | y >= f, x] and
   E[f - y | y < f, x], a scale of the noise on each side, not a quantile);
4. for a confidence level gamma in (0, 1), the interval
       U(x) = f(x) + alpha u(x),    L(x) = f(x) - beta l(x),
   with alpha, beta found by root finding (bisection) so that, on the N training points,
       #{i: y_i > U(x_i)} = #{i: y_i < L(x_i)} = k(gamma) = floor(N (1 - gamma) / 2).
   #{y_i > f_i + alpha u_i} = #{r_i > alpha} with r_i = (y_i - f_i) / u_i is a non-increasing step
   function of alpha, so bisection on [min r - 1, max r + 1] stops inside the interval of alphas
   where it equals k exactly (it exists unless ties among the r_i make the count jump over k; then
   the alpha with the nearest count below k is returned and `achieved` says so). Because only
   alpha, beta depend on gamma, every gamma is answered from the same three networks without
   retraining, and U >= f >= L for every gamma: the intervals of different gammas never cross.

Out of distribution (the paper's section 4): the output biases of u and l are initialised large
(UQnet: 10.0). Training on the residuals pulls u and l down only where there are data; far from the
data u and l stay near their large initial values, so the interval widens where the model
extrapolates. Without that initialisation a ReLU network extrapolates u, l linearly and may narrow.
A per-input confidence score compares the width with the mean training width:
       c(x) = min( mean_i w(x_i) / w(x), 1 ),   w(x) = U(x) - L(x) = alpha u(x) + beta l(x),
so c ~ 1 in distribution and c -> 0 as the interval widens away from the data.

Scores: PICP = fraction of points with L <= y <= U; MPIW = mean of U - L divided by the range of y
(max - min of the targets of the whole table, the UQnet convention for the UCI sets).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CALIBRATION_LEVELS = tuple(float(g) for g in np.round(np.concatenate([np.arange(0.5, 0.95, 0.05),
                                                                      [0.95, 0.97, 0.98, 0.99]]), 4))


def check_confidence(gamma: float, name: str = "confidence") -> float:
    """gamma as a float in the open interval (0, 1), or a ValueError naming it."""
    try:
        value = float(gamma)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in the open interval (0, 1), e.g. 0.95; got {gamma!r}") from None
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name}={gamma!r} is outside the open interval (0, 1); give a confidence level such as "
                         f"0.9 or 0.95")
    return value


def target_count(n: int, gamma: float) -> int:
    """k(gamma): how many of n training points may lie above U (and, separately, below L)."""
    return int(np.floor(n * (1.0 - check_confidence(gamma)) / 2.0 + 1e-9))


def bisect_scale(ratio: np.ndarray, k: int, max_iter: int = 200) -> tuple[float, int]:
    """(a, #{ratio > a}): bisection for #{ratio > a} == k (see the module doc)."""
    ratio = np.asarray(ratio, dtype=np.float64).ravel()
    if not 0 <= k <= len(ratio):
        raise ValueError(f"target count {k} is outside 0..{len(ratio)}")
    count = lambda a: int(np.count_nonzero(ratio > a))  # noqa: E731
    lo, hi = float(ratio.min()) - 1.0, float(ratio.max()) + 1.0  # count(lo) = n >= k >= 0 = count(hi)
    for _ in range(max_iter):
        mid = 0.5 * (lo + hi)
        c = count(mid)
        if c == k:
            return mid, c
        if c > k:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, abs(hi)):
            break
    return hi, count(hi)  # ties: the count jumps over k; hi keeps at most k points outside


@dataclass
class Scales:
    gamma: float
    alpha: float
    beta: float
    target: int  # k(gamma) per side (training rows); held-out rows: how many may lie outside in all
    above: int  # calibration points above U
    below: int  # calibration points below L
    n: int


class IntervalCalibrator:
    """Step 4 for any gamma, from the training points' y, f, u, l (the same units as the intervals)."""

    def __init__(self, y: np.ndarray, f: np.ndarray, u: np.ndarray, l: np.ndarray):
        y, f, u, l = (np.asarray(a, dtype=np.float64).ravel() for a in (y, f, u, l))
        if not (len(y) == len(f) == len(u) == len(l)) or len(y) == 0:
            raise ValueError(f"need equally long, non-empty y, f, u, l; got {len(y)}, {len(f)}, {len(u)}, {len(l)}")
        if (u <= 0).any() or (l <= 0).any():
            raise ValueError("u and l must be positive (the PI3NN networks end in sqrt(z^2 + eps))")
        self.y, self.f, self.u, self.l = y, f, u, l
        self.r_up, self.r_down = (y - f) / u, (f - y) / l
        self._cache: dict[float, Scales] = {}

    def scales(self, gamma: float) -> Scales:
        gamma = check_confidence(gamma)
        if gamma not in self._cache:
            k = target_count(len(self.y), gamma)
            alpha, above = bisect_scale(self.r_up, k)
            beta, below = bisect_scale(self.r_down, k)
            self._cache[gamma] = Scales(gamma, alpha, beta, k, above, below, len(self.y))
        return self._cache[gamma]

    def bounds(self, f, u, l, gamma: float) -> tuple[np.ndarray, np.ndarray]:
        """(L, U) = (f - beta l, f + alpha u) at confidence gamma."""
        s = self.scales(gamma)
        f, u, l = (np.asarray(a, dtype=np.float64) for a in (f, u, l))
        return f - s.beta * l, f + s.alpha * u

    def width(self, u, l, gamma: float) -> np.ndarray:
        s = self.scales(gamma)
        return s.alpha * np.asarray(u, dtype=np.float64) + s.beta * np.asarray(l, dtype=np.float64)

    def confidence_score(self, u, l, gamma: float) -> np.ndarray:
        """min(mean training width / width(x), 1) per input."""
        train_width = float(self.width(self.u, self.l, gamma).mean())
        return np.minimum(train_width / np.maximum(self.width(u, l, gamma), 1e-300), 1.0)


class HeldOutCalibrator(IntervalCalibrator):
    """Step 4 on held-out calibration rows (no network trained, early-stopped or chosen on them), with
    split conformal's finite-sample rank.

    The training-row rule (exactly k = floor(n (1 - gamma) / 2) points outside on each side) covers new
    points less often than gamma when n is small (n = 45, gamma 0.95: ~0.94, tests/unit/test_pi3nn.py). Here alpha = beta = q, the ceil((n + 1) gamma)-th smallest of the scores
        s_i = max((y_i - f_i) / u_i, (f_i - y_i) / l_i),
    so L <= y <= U iff s <= q and, for a new point exchangeable with the n held-out ones, coverage is at
    least gamma (Romano et al. 2019's conformalized quantile regression, with u and l as the two sides'
    scales). With fewer than gamma / (1 - gamma) rows the rank exceeds n and the interval is unbounded
    (q = inf), as split conformal's is."""

    def __init__(self, y, f, u, l):
        super().__init__(y, f, u, l)
        self.score = np.sort(np.maximum(self.r_up, self.r_down))

    def scales(self, gamma: float) -> Scales:
        gamma = check_confidence(gamma)
        if gamma not in self._cache:
            n = len(self.score)
            rank = int(np.ceil((n + 1) * gamma - 1e-9))
            q = float(self.score[rank - 1]) if rank <= n else float("inf")
            above, below = int(np.count_nonzero(self.r_up > q)), int(np.count_nonzero(self.r_down > q))
            self._cache[gamma] = Scales(gamma, q, q, max(n - rank, 0), above, below, n)
        return self._cache[gamma]

    def confidence_score(self, u, l, gamma: float) -> np.ndarray:
        """min(mean held-out width / width(x), 1): alpha = beta, so it cancels (finite where q is inf)."""
        cal_width = float((self.u + self.l).mean())
        return np.minimum(cal_width / np.maximum(np.asarray(u) + np.asarray(l), 1e-300), 1.0)


CALIBRATE_ON = ("train", "cal")


def make_calibrator(calibrate_on: str, y, f, u, l) -> IntervalCalibrator:
    """Step 4 on the training rows ("train": the paper's exact count) or the held-out calibration rows
    ("cal", `HeldOutCalibrator`)."""
    if calibrate_on not in CALIBRATE_ON:
        raise ValueError(f"calibrate_on={calibrate_on!r} must be 'train' (the paper) or 'cal' (held-out "
                         f"calibration rows)")
    return (IntervalCalibrator if calibrate_on == "train" else HeldOutCalibrator)(y, f, u, l)


def picp(y, lower, upper) -> float:
    y, lower, upper = (np.asarray(a, dtype=np.float64).ravel() for a in (y, lower, upper))
    return float(np.mean((y >= lower) & (y <= upper)))


def mpiw(lower, upper, y_range: float) -> float:
    """Mean interval width divided by the range of y."""
    if not y_range > 0:
        raise ValueError(f"the range of y must be > 0 to normalise MPIW, got {y_range}")
    return float(np.mean(np.asarray(upper, dtype=np.float64) - np.asarray(lower, dtype=np.float64)) / y_range)


def calibration_curve(calibrator: IntervalCalibrator, y, f, u, l, levels=CALIBRATION_LEVELS) -> list[dict]:
    """[{gamma, picp, mpiw_raw}] on the given points, one row per level, no retraining."""
    rows = []
    for gamma in levels:
        lower, upper = calibrator.bounds(f, u, l, gamma)
        rows.append({"gamma": float(gamma), "picp": picp(y, lower, upper), "width": float(np.mean(upper - lower))})
    return rows
