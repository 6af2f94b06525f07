"""Neural posterior estimation (NPE) with `sbi` (Greenberg et al. 2019; Tejero-Cantero et al. 2020, the `sbi`
package), another amortized method, on the same training runs as DBUQ.

A conditional density estimator q(x | y) (sbi's masked autoregressive flow) is fitted by maximum likelihood to
pairs (x_j, y_j + sigma eps), `noise_copies` noise draws per run, so that q approximates the posterior under
the same likelihood N(y* | model(x), sigma^2). Parameters of a uniform prior are mapped to the unit box
(sbi's BoxUniform(0, 1), samples outside the box are rejected by sbi); outputs are standardized.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from .problems import Problem


class NPEPosterior:
    """Fit on the runs `rows` of `problem`; `sample(y_obs (M, K), n)` -> (M, n, D) physical units."""

    def __init__(self, problem: Problem, rows: np.ndarray, *, noise_copies: int = 5, seed: int = 0,
                 estimator: str = "maf", max_epochs: int = 200):
        from sbi.inference import NPE
        from sbi.utils import BoxUniform

        self.problem = problem
        p, rng = problem, np.random.default_rng([seed, 505])
        x, y = np.repeat(p.x[rows], noise_copies, 0), np.repeat(p.y[rows], noise_copies, 0)
        y = y + p.sigma * rng.standard_normal(y.shape)
        if p.prior.kind == "uniform":
            self.shift, self.scale = p.prior.a, p.prior.b - p.prior.a
            prior = BoxUniform(torch.zeros(x.shape[1]), torch.ones(x.shape[1]))
        else:
            self.shift, self.scale, prior = p.prior.a, p.prior.b, None
        self.y_mean, self.y_std = y.mean(0), y.std(0)
        torch.manual_seed(seed)
        start = time.perf_counter()
        inference = NPE(prior=prior, density_estimator=estimator, show_progress_bars=False)
        theta = torch.as_tensor((x - self.shift) / self.scale, dtype=torch.float32)
        inference.append_simulations(theta, torch.as_tensor((y - self.y_mean) / self.y_std, dtype=torch.float32))
        inference.train(max_num_epochs=max_epochs)
        self.posterior = inference.build_posterior()
        self.train_seconds = time.perf_counter() - start

    def sample(self, y_obs: np.ndarray, n_samples: int, seed: int = 0) -> np.ndarray:
        torch.manual_seed(seed)
        yn = torch.as_tensor((np.atleast_2d(y_obs) - self.y_mean) / self.y_std, dtype=torch.float32)
        out = [self.posterior.sample((n_samples,), x=row, show_progress_bars=False).numpy() for row in yn]
        return np.stack(out).astype(np.float64) * self.scale + self.shift
