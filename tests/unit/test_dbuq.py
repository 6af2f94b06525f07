"""DBUQ plug-in pieces against exact answers: the closed-form-score ODE labels vs the analytic linear-Gaussian
posterior, the SBC / coverage metrics (uniform for exact posteriors, rejecting over-confident ones), emcee on
the exact model, the PCA decoder, and the clear errors for bad input."""
import numpy as np
import pytest
import torch

from orbit.metrics import calibration as cal
from orbit.plugins.dbuq.emulator import pca_decoder
from orbit.plugins.dbuq.labels import make_labels, ode_endpoints
from orbit.plugins.dbuq.mcmc import run_chain
from orbit.plugins.dbuq.posterior import ExtrapolationWarning, Normalizer
from orbit.plugins.dbuq.problems import Prior, linear_gaussian, load_problem, nonlinear


def _normalized(problem, rows):
    norm = Normalizer(problem, rows)
    return norm, norm.xn(problem.x[rows]), norm.yn(problem.y[rows])


def test_ode_labels_for_one_observation_match_the_analytic_posterior():
    p = linear_gaussian(2000, 1.0, seed=0)
    rows = np.arange(2000)
    norm, xe, ye = _normalized(p, rows)
    rng = np.random.default_rng(5)
    y_obs = p.forward(p.prior.sample(1, rng)) + p.sigma * rng.standard_normal((1, 5))
    n = 1500
    y0 = np.repeat(norm.yn(y_obs), n, 0)
    z = rng.standard_normal((n, 8))
    x = ode_endpoints(*(torch.as_tensor(a) for a in (xe, ye, y0, z)), torch.as_tensor(norm.noise ** 2), steps=10)
    x = norm.x_physical(x.numpy())
    mean, cov = p.analytic_posterior(y_obs)
    std = np.sqrt(np.diag(cov))
    assert np.abs((x.mean(0) - mean[0]) / std).mean() < 0.3
    assert 0.8 < (x.std(0) / std).mean() < 1.2


def test_labels_are_seeded_and_shaped():
    p = nonlinear(200, 0.1, seed=0)
    norm, xe, ye = _normalized(p, np.arange(200))
    a = make_labels(xe, ye, norm.noise, 0.0, 64, 5, seed=3)
    b = make_labels(xe, ye, norm.noise, 0.0, 64, 5, seed=3)
    assert [v.shape for v in a] == [(64, 2), (64, 2), (64, 2)]
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    with pytest.raises(ValueError, match="kernel_width must be >= 0"):
        make_labels(xe, ye, norm.noise, -1.0, 64, 5, seed=3)


def _exact_gaussian_case(n_obs=400, n_samples=200, shrink=1.0, seed=0):
    """Truths from the prior, observations from the likelihood, samples from the exact posterior (std * shrink)."""
    p = linear_gaussian(10, 0.5, seed=0)
    rng = np.random.default_rng(seed)
    truth = p.prior.sample(n_obs, rng)
    y_obs = p.forward(truth) + p.sigma * rng.standard_normal((n_obs, 5))
    mean, cov = p.analytic_posterior(y_obs)
    chol = np.linalg.cholesky(cov)
    samples = mean[:, None, :] + shrink * rng.standard_normal((n_obs, n_samples, 8)) @ chol.T
    return samples, truth


def test_sbc_ranks_are_uniform_and_coverage_nominal_for_the_exact_posterior():
    samples, truth = _exact_gaussian_case()
    assert cal.rank_uniformity_pvalues(cal.sbc_ranks(samples, truth), samples.shape[1]).min() > 1e-3
    assert abs(cal.interval_coverage(samples, truth, 0.9).mean() - 0.9) < 0.03
    assert abs(cal.interval_coverage(samples, truth, 0.5).mean() - 0.5) < 0.04


def test_sbc_rejects_an_overconfident_posterior():
    samples, truth = _exact_gaussian_case(shrink=0.6)
    assert cal.rank_uniformity_pvalues(cal.sbc_ranks(samples, truth), samples.shape[1]).max() < 1e-3
    assert cal.interval_coverage(samples, truth, 0.9).mean() < 0.8


def test_emcee_on_the_exact_model_recovers_the_analytic_posterior():
    p = linear_gaussian(500, 0.5, seed=0)
    y_obs = p.y[0] + 0.5 * np.random.default_rng(1).standard_normal(5)
    chain = run_chain(p.forward, p.prior, y_obs, p.sigma, p.x, walkers=32, steps=1500, seed=0)
    mean, cov = p.analytic_posterior(y_obs[None])
    std = np.sqrt(np.diag(cov))
    assert np.abs((chain.samples.mean(0) - mean[0]) / std).max() < 0.25
    assert np.abs(chain.samples.std(0) / std - 1).max() < 0.15
    assert 0.2 < chain.acceptance < 0.8 and chain.autocorr > 1


def test_pca_decoder_keeps_components_to_the_explained_variance():
    rng = np.random.default_rng(0)
    y = rng.standard_normal((100, 2)) @ rng.standard_normal((2, 30)) + 1e-3 * rng.standard_normal((100, 30))
    comps, center = pca_decoder(y, 0.999)
    assert comps.shape == (2, 30) and np.allclose(center, y.mean(0))
    assert np.allclose(comps @ comps.T, np.eye(2), atol=1e-8)
    assert pca_decoder(y, 1.0)[0].shape[0] > 2


def test_bad_prior_and_observations_are_refused_or_warned():
    with pytest.raises(ValueError, match=r"low >= high at \(index, low, high\) \[\(1, 2.0, 1.0\)\]"):
        Prior("uniform", [0.0, 2.0], [1.0, 1.0])
    p = nonlinear(100, 0.1, seed=0)
    norm = Normalizer(p, np.arange(100))
    with pytest.raises(ValueError, match=r"needs 2 values \(y0, y1\), got shape \(1, 3\)"):
        norm.check_observations([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="NaN"):
        norm.check_observations([[0.1, np.nan]])
    with pytest.warns(ExtrapolationWarning, match="extrapolation"):
        norm.check_observations([[50.0, 0.0]])
    with pytest.raises(ValueError, match="noise_sigma has 3 values"):
        load_problem("nonlinear", sigma=[0.1, 0.1, 0.1])
    with pytest.raises(ValueError, match="not one of"):
        load_problem("nope")


def test_logit_box_round_trips_and_keeps_every_sample_inside_the_prior_box():
    p = nonlinear(200, 0.1, seed=0)
    rows = np.arange(200)
    norm = Normalizer(p, rows, logit_box=True)
    assert np.allclose(norm.x_physical(norm.xn(p.x[rows])), p.x[rows], atol=1e-9)
    wide = norm.x_physical(np.random.default_rng(0).normal(0.0, 10.0, (5000, 2)))  # far beyond the ensemble
    assert np.all((wide >= p.prior.a) & (wide <= p.prior.b))  # the closed box Prior.log_prob accepts
    gaussian = linear_gaussian(100, 0.5, seed=0)  # no box: the plain standardization
    plain = Normalizer(gaussian, np.arange(100), logit_box=True)
    assert plain.box is None and np.allclose(plain.xn(gaussian.x).mean(0), 0.0, atol=1e-9)
