"""Known answers of the downscaling metrics."""
import numpy as np
import pytest
import torch

from orbit.metrics.downscale import (downscaling_scores, gaussian_window, pearson, percentile_thresholds, rmse,
                                     rmse_above, ssim, ssim_per_sample)

H, W = 16, 32
LAT = torch.linspace(-84.375, 84.375, H)


def _truth(n: int = 3, c: int = 2) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(n, c, H, W) * torch.tensor([1.0, 10.0])[None, :c, None, None] + 5.0


def test_perfect_prediction():
    truth = _truth()
    scores = downscaling_scores(truth.clone(), truth, LAT, ["a", "b"])
    for row in scores.values():
        assert row["rmse"] == 0.0 and row["pearson"] == pytest.approx(1.0, abs=1e-12)
        assert row["ssim"] == pytest.approx(1.0, abs=1e-12)
        assert all(row[f"rmse_p{q}"] == 0.0 for q in ("68", "95", "99.7", "99.99"))


def test_offset_and_affine_predictions():
    truth = _truth()
    torch.testing.assert_close(rmse(truth + 0.5, truth, LAT), torch.tensor([0.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(rmse_above(truth - 2.0, truth, LAT), torch.full((4, 2), 2.0, dtype=torch.float64))
    torch.testing.assert_close(pearson(3 * truth + 1, truth, LAT), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(pearson(-truth, truth, LAT), -torch.ones(2, dtype=torch.float64))


def test_percentile_thresholds_and_masks():
    truth = torch.arange(101, dtype=torch.float64).view(1, 1, 1, 101)
    np.testing.assert_allclose(percentile_thresholds(truth, [68, 95])[:, 0], [68.0, 95.0])
    truth = torch.arange(H * W, dtype=torch.float64).view(1, 1, H, W)
    threshold = percentile_thresholds(truth, [95])[0, 0]
    above = truth >= threshold
    # error 1 exactly on the pixels at or above the threshold: their RMSE is 1, elsewhere 0
    assert rmse_above(truth + above, truth, LAT, [95]).item() == pytest.approx(1.0)
    assert rmse_above(truth + ~above, truth, LAT, [95]).item() == 0.0
    assert 0.0 < rmse(truth + above, truth, LAT).item() < 1.0
    # the 99.99th percentile of 512 values keeps only the maximum
    only_max = truth == truth.max()
    assert rmse_above(truth + 3 * only_max, truth, LAT, [99.99]).item() == pytest.approx(3.0)


def test_ssim_of_constant_fields():
    a, b, L = 2.0, 3.0, 10.0
    value = ssim_per_sample(torch.full((1, 1, 12, 12), a), torch.full((1, 1, 12, 12), b), torch.tensor([L]))
    c1 = (0.01 * L) ** 2
    assert value.item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-12)


def test_ssim_one_window_by_hand():
    torch.manual_seed(1)
    x, y = torch.rand(1, 1, 11, 11, dtype=torch.float64), torch.rand(1, 1, 11, 11, dtype=torch.float64)
    w = gaussian_window().numpy()
    w2 = np.outer(w, w)
    xn, yn = x[0, 0].numpy(), y[0, 0].numpy()
    mx, my = (w2 * xn).sum(), (w2 * yn).sum()
    vx, vy = (w2 * xn**2).sum() - mx**2, (w2 * yn**2).sum() - my**2
    cxy = (w2 * xn * yn).sum() - mx * my
    c1, c2 = 0.01**2, 0.03**2  # L = 1
    expected = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    assert ssim_per_sample(x, y, torch.tensor([1.0])).item() == pytest.approx(expected, rel=1e-10)


def test_ssim_drops_with_noise_and_rejects_small_maps():
    truth = _truth(2, 1)
    noisy = truth + 0.5 * torch.randn_like(truth)
    assert 0.0 < ssim(noisy, truth).item() < 0.95
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        rmse(torch.zeros(1, 1, H, W), torch.zeros(1, 2, H, W), LAT)
    with pytest.raises(ValueError, match="channel names"):
        downscaling_scores(torch.zeros(1, 1, H, W), torch.zeros(1, 1, H, W), LAT, ["a", "b"])
