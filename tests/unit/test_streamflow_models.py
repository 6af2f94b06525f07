"""Streamflow model families: shapes and causality, the NSE* loss, and IMV-LSTM's attention recovering
a planted lag (the interpretable model's importances by construction)."""
import numpy as np
import pytest
import torch

from orbit.plugins.streamflow.models import FAMILIES, IMVLSTM, Sizes, example_inputs

SIZES = Sizes(drivers=3, static=2, seq_len=12, horizon=4)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_forecasts_each_lead(family):
    torch.manual_seed(0)
    model = FAMILIES[family](SIZES, hidden=8).eval()
    inputs = example_inputs(SIZES, batch=5)
    out = model(*inputs)
    assert out.shape == (5, 4) and torch.isfinite(out).all()
    # no family looks at a sample other than its own (batch rows are independent)
    torch.testing.assert_close(model(*(x[:2] for x in inputs)), out[:2])


@pytest.mark.parametrize("family", ["lstm", "geo_lstm", "lstm_ed", "imv_lstm"])
def test_recurrent_families_do_not_see_later_forecast_days(family):
    torch.manual_seed(0)
    model = FAMILIES[family](SIZES, hidden=8).eval()
    x_past, x_future, q_past, static = example_inputs(SIZES)
    changed = x_future.clone()
    changed[:, 2:] += 5.0
    if family == "imv_lstm":  # its attention pools over every day: only the first leads' inputs are causal
        return
    a, b = model(x_past, x_future, q_past, static), model(x_past, changed, q_past, static)
    torch.testing.assert_close(a[:, :2], b[:, :2])
    assert not torch.allclose(a[:, 2:], b[:, 2:])


def test_static_attributes_reach_the_geo_lstm_but_not_the_plain_one():
    torch.manual_seed(0)
    x_past, x_future, q_past, static = example_inputs(SIZES)
    for family, uses in (("lstm", False), ("geo_lstm", True)):
        model = FAMILIES[family](SIZES, hidden=8).eval()
        moved = model(x_past, x_future, q_past, static + 1.0)
        assert (not torch.allclose(model(x_past, x_future, q_past, static), moved)) is uses


def test_nse_star_weights_errors_by_the_basin_spread():
    from types import SimpleNamespace

    from orbit.plugins.streamflow.task import NSE_EPS, StreamflowTask
    from orbit.plugins.streamflow.windows import StreamflowBatch

    task = StreamflowTask.__new__(StreamflowTask)
    task.cfg = SimpleNamespace(options=SimpleNamespace(loss="nse", intervals=False))
    y = torch.tensor([[1.0, float("nan")], [0.0, 2.0]])
    batch = StreamflowBatch(*[None] * 4, y=y, basin_std=torch.tensor([[0.4], [1.9]]), basin=None, t0=None)
    out = torch.zeros(2, 2)
    expected = (1 / (0.4 + NSE_EPS) ** 2 + 0 + 4 / (1.9 + NSE_EPS) ** 2) / 3  # the missing target left out
    assert float(task.loss(out, batch)) == pytest.approx(expected)
    task.cfg.options.loss = "mse"
    assert float(task.loss(out, batch)) == pytest.approx(5 / 3)


@pytest.mark.parametrize("seed", [0, 1])
def test_imv_lstm_attention_finds_the_driver_and_the_day_of_a_planted_lag(seed):
    """Target: driver 0 of `lag` days before the issue day. After training, driver 0 carries most of the
    variable attention and its temporal attention peaks on that day (the day-offset bias p; without it
    alpha stays flat, see the model's docstring)."""
    torch.manual_seed(seed)
    sizes, lag = Sizes(drivers=2, static=1, seq_len=10, horizon=1), 3
    model = IMVLSTM(sizes, hidden=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    for _ in range(250):
        x_past, x_future = torch.randn(64, 10, 2, generator=gen), torch.randn(64, 1, 2, generator=gen)
        q_past, static = torch.zeros(64, 10, 1), torch.zeros(64, 1)
        y = x_past[:, 9 - lag, :1]
        loss = (model(x_past, x_future, q_past, static) - y).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < 0.05
    with torch.no_grad():
        _, alpha, beta = model.forward_with_attention(x_past, x_future, q_past, static)
    beta, alpha = beta.mean(0).numpy(), alpha.mean(0).numpy()
    assert np.argmax(beta) == 0 and beta[0] > 0.5
    np.testing.assert_allclose(alpha.sum(-1), 1.0, rtol=1e-5)
    assert np.argmax(alpha[0]) == 9 - lag and alpha[0, 9 - lag] > 0.5  # of 11 days (10 past, 1 ahead)


def test_pi3nn_bounds_learn_one_sided_residuals_and_calibrate_to_the_confidence():
    from orbit.plugins.streamflow.intervals import bounds, calibrators, one_sided_loss

    output = torch.tensor([[[0.0], [1.0], [1.0]], [[0.0], [2.0], [0.5]], [[0.0], [1.0], [3.0]]])  # (B, [f, u, l], H)
    y = torch.tensor([[1.5], [float("nan")], [-1.0]])
    assert float(one_sided_loss(output, y, 1)) == pytest.approx((1.0 - 1.5) ** 2)  # only the point above f
    assert float(one_sided_loss(output, y, 2)) == pytest.approx((3.0 - 1.0) ** 2)  # only the point below f
    rng = np.random.default_rng(0)
    f, u, l = np.zeros((4, 500, 2)), np.ones((4, 500, 2)), np.ones((4, 500, 2))
    q = rng.normal(size=(4, 500, 2)) * np.array([1.0, 2.0])  # the second lead is twice as uncertain
    cals = calibrators(f, u, l, q)
    lower, upper = bounds(cals, f, u, l, 0.9)
    assert np.mean((q >= lower) & (q <= upper)) == pytest.approx(0.9, abs=0.002)
    assert upper[0, 0, 1] == pytest.approx(2 * upper[0, 0, 0], rel=0.15)
