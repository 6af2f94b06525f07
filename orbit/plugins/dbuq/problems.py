"""Calibration problems: a prior ensemble D = {(x_j, y_j)} (parameters, model outputs) with its prior,
its observation noise and, where one exists, the exact answer.

- `elm_ozark`: 1000 E3SM land model runs at the Missouri Ozark AmeriFlux site (../shared/data/elm_ozark,
  README there): 8 parameters drawn uniformly in the ranges below, 5 annual-mean latent heat fluxes
  2006-2010 (W m-2). No exact posterior: surrogate + MCMC is the reference.
- `linear_gaussian`: x ~ N(m0, diag(s0^2)) in 8 dimensions, y = A x + b (5 outputs), y* = y + N(0, sigma^2).
  The posterior is Gaussian with precision P = S0^-1 + A^T S^-1 A and mean P^-1 (S0^-1 m0 + A^T S^-1 (y* - b))
  (Bishop, PRML eq. 2.116-2.117).
- `nonlinear`: x ~ U([-1, 1]^2), y = (x1 + x2^2, x1 x2 + sin(2 x2)), a curved ("banana") posterior whose
  reference is a long emcee chain on the exact likelihood.

Runs are ordered; by default the last `holdout_fraction` of them are the synthetic-truth test cases
(never used for labels or training), the `val_fraction` before them the validation cases.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ELM_PARAMETERS = ("rootb_par", "slatop", "flnr", "frootcn", "froot_leaf", "br_mr", "crit_dayl", "crit_onset_gdd")
ELM_LOW = (0.5, 0.01, 0.1, 25.0, 0.3, 1.5e-6, 35000.0, 600.0)
ELM_HIGH = (4.0, 0.05, 0.4, 60.0, 1.5, 4.0e-6, 45000.0, 1000.0)
ELM_OUTPUTS = tuple(f"lh_{year}" for year in range(2006, 2011))
PROBLEMS = ("elm_ozark", "linear_gaussian", "nonlinear")


def shared_data_dir() -> Path:
    """`$ORBIT_SHARED_DATA`, else `../shared/data` beside the project checkout (where CI keeps it)."""
    if os.environ.get("ORBIT_SHARED_DATA"):
        return Path(os.environ["ORBIT_SHARED_DATA"])
    return Path(__file__).resolve().parents[3].parent / "shared" / "data"


@dataclass
class Prior:
    """Uniform box (`kind="uniform"`: low, high) or independent Gaussians (`kind="gaussian"`: mean, std)."""

    kind: str
    a: np.ndarray  # low or mean
    b: np.ndarray  # high or std

    def __post_init__(self) -> None:
        self.a, self.b = np.asarray(self.a, np.float64), np.asarray(self.b, np.float64)
        if self.kind == "uniform" and np.any(self.a >= self.b):
            bad = [(i, float(lo), float(hi)) for i, (lo, hi) in enumerate(zip(self.a, self.b)) if lo >= hi]
            raise ValueError(f"prior range with low >= high at (index, low, high) {bad}; every low must be < high")
        if self.kind == "gaussian" and np.any(self.b <= 0):
            raise ValueError(f"Gaussian prior std must be > 0, got {self.b.tolist()}")
        if self.kind not in ("uniform", "gaussian"):
            raise ValueError(f"prior kind {self.kind!r} is not 'uniform' or 'gaussian'")

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.kind == "uniform":
            return rng.uniform(self.a, self.b, size=(n, len(self.a)))
        return self.a + self.b * rng.standard_normal((n, len(self.a)))

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        """Unnormalized log density of rows x (N, D): -inf outside the box / Gaussian log density."""
        if self.kind == "uniform":
            inside = np.all((x >= self.a) & (x <= self.b), axis=-1)
            return np.where(inside, 0.0, -np.inf)
        return -0.5 * np.sum(((x - self.a) / self.b) ** 2, axis=-1)


@dataclass
class Problem:
    """A prior ensemble and what calibrating against it needs. `forward` is the exact model where known."""

    name: str
    x: np.ndarray  # (N, D) parameters, physical units
    y: np.ndarray  # (N, K) model outputs, physical units (noise-free)
    parameters: tuple[str, ...]
    outputs: tuple[str, ...]
    prior: Prior
    sigma: np.ndarray  # (K,) observation noise std, physical units
    forward: object = None  # callable x (N, D) -> y (N, K), or None
    linear: dict = field(default_factory=dict)  # A, b of the linear-Gaussian problem

    def split(self, val_fraction: float, holdout_fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(train, val, test) run indices: the last holdout_fraction are test, the val_fraction before
        them validation, the rest the ensemble that labels and training use."""
        n = len(self.x)
        n_test, n_val = int(round(n * holdout_fraction)), int(round(n * val_fraction))
        if n_test < 1 or n - n_test - n_val < 10:
            raise ValueError(f"{n} runs with holdout_fraction={holdout_fraction}, val_fraction={val_fraction} leave "
                             f"{n_test} test and {n - n_test - n_val} training runs; need >= 1 and >= 10")
        idx = np.arange(n)
        return idx[:n - n_test - n_val], idx[n - n_test - n_val:n - n_test], idx[n - n_test:]

    def analytic_posterior(self, y_obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Linear-Gaussian only: posterior means (M, D) and the shared covariance (D, D) for y_obs (M, K)."""
        if not self.linear:
            raise ValueError(f"problem {self.name!r} has no analytic posterior (only linear_gaussian has)")
        a, b = self.linear["A"], self.linear["b"]
        prior_prec = np.diag(1.0 / self.prior.b ** 2)
        noise_prec = np.diag(1.0 / self.sigma ** 2)
        cov = np.linalg.inv(prior_prec + a.T @ noise_prec @ a)
        mean = (prior_prec @ self.prior.a + (y_obs - b) @ noise_prec @ a) @ cov
        return mean, cov

    def log_likelihood(self, x: np.ndarray, y_obs: np.ndarray) -> np.ndarray:
        """Exact log N(y_obs | forward(x), sigma^2) up to a constant, for rows x (N, D)."""
        if self.forward is None:
            raise ValueError(f"problem {self.name!r} has no exact forward model; use a surrogate")
        return -0.5 * np.sum(((self.forward(x) - y_obs) / self.sigma) ** 2, axis=-1)


def noise_vector(sigma: list[float] | float, n_outputs: int, outputs: tuple[str, ...]) -> np.ndarray:
    s = np.atleast_1d(np.asarray(sigma, np.float64))
    if len(s) == 1:
        s = np.repeat(s, n_outputs)
    if len(s) != n_outputs:
        raise ValueError(f"noise_sigma has {len(s)} values; give one, or one per output {list(outputs)}")
    if not np.all(np.isfinite(s) & (s > 0)):
        raise ValueError(f"noise_sigma must be finite and > 0 (physical units), got {s.tolist()}")
    return s


def load_elm_ozark(data_dir: str | Path | None, sigma) -> Problem:
    directory = Path(data_dir) if data_dir else shared_data_dir() / "elm_ozark"
    files = [directory / "InputPara.npy", directory / "Observations.npy"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"ELM Ozark ensemble not found: {missing}; set data.data_dir, --data-dir or "
                                f"ORBIT_SHARED_DATA (the directory holding elm_ozark/)")
    x, y = np.load(files[0]).astype(np.float64), np.load(files[1]).astype(np.float64)
    if x.shape[1] != len(ELM_PARAMETERS) or y.shape[1] != len(ELM_OUTPUTS) or len(x) != len(y):
        raise ValueError(f"{directory}: expected (N, 8) parameters and (N, 5) outputs, got {x.shape}, {y.shape}")
    return Problem("elm_ozark", x, y, ELM_PARAMETERS, ELM_OUTPUTS, Prior("uniform", ELM_LOW, ELM_HIGH),
                   noise_vector(sigma, 5, ELM_OUTPUTS))


def linear_gaussian(n_runs: int, sigma, seed: int) -> Problem:
    """8 parameters with prior N(m0, s0^2) on different scales, 5 outputs y = A x + b. A's rows are drawn
    once (seed) so that the outputs constrain some directions well and leave three to the prior."""
    rng = np.random.default_rng([seed, 101])
    m0, s0 = rng.uniform(-2, 2, 8), np.exp(rng.uniform(-1, 1, 8))
    a = rng.normal(size=(5, 8)) / s0 / np.sqrt(8)  # each output has O(1) prior spread
    b = rng.uniform(-1, 1, 5)
    x = m0 + s0 * rng.standard_normal((n_runs, 8))
    names = tuple(f"theta{i}" for i in range(8))
    outputs = tuple(f"y{i}" for i in range(5))
    forward = lambda theta: theta @ a.T + b  # noqa: E731
    return Problem("linear_gaussian", x, forward(x), names, outputs, Prior("gaussian", m0, s0),
                   noise_vector(sigma, 5, outputs), forward, {"A": a, "b": b})


def banana(theta: np.ndarray) -> np.ndarray:
    x1, x2 = theta[..., 0], theta[..., 1]
    return np.stack([x1 + x2 ** 2, x1 * x2 + np.sin(2.0 * x2)], axis=-1)


def nonlinear(n_runs: int, sigma, seed: int) -> Problem:
    rng = np.random.default_rng([seed, 202])
    prior = Prior("uniform", (-1.0, -1.0), (1.0, 1.0))
    x = prior.sample(n_runs, rng)
    outputs = ("y0", "y1")
    return Problem("nonlinear", x, banana(x), ("x1", "x2"), outputs, prior, noise_vector(sigma, 2, outputs), banana)


def load_problem(name: str, *, data_dir: str | None = None, n_runs: int = 1000, sigma=1.0, seed: int = 0) -> Problem:
    if name == "elm_ozark":
        return load_elm_ozark(data_dir, sigma)
    if name == "linear_gaussian":
        return linear_gaussian(n_runs, sigma, seed)
    if name == "nonlinear":
        return nonlinear(n_runs, sigma, seed)
    raise ValueError(f"data.problem={name!r} is not one of {list(PROBLEMS)}")


def observations_with_noise(problem: Problem, rows: np.ndarray, seed: int) -> np.ndarray:
    """Synthetic-truth observations: the simulated outputs of `rows` plus one seeded N(0, sigma^2) draw,
    so that the truth is a draw from the likelihood the posterior assumes (what coverage and SBC need)."""
    rng = np.random.default_rng([seed, 303])
    return problem.y[rows] + problem.sigma * rng.standard_normal((len(rows), problem.y.shape[1]))
