"""Known answers of the downscaling metrics."""
import numpy as np
import pytest
import torch

from orbit.metrics.downscale import (DATA_RANGE, downscaling_scores, pearson, percentile_thresholds, rmse,
                                     rmse_above, ssim, ssim_per_sample)

H, W = 16, 32
LAT = torch.linspace(-84.375, 84.375, H)


def _truth(n: int = 3, c: int = 2) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(n, c, H, W) * torch.tensor([1.0, 10.0])[None, :c, None, None] + 5.0


def test_perfect_prediction():
    truth = _truth()
    scores = downscaling_scores(truth.clone(), truth, LAT, ["t2m", "z500"])
    for row in scores.values():
        assert row["rmse"] == 0.0 and row["pearson"] == pytest.approx(1.0, abs=1e-12)
        assert row["ssim"] == pytest.approx(1.0, abs=1e-12)
        assert all(row[f"rmse_p{q}"] == 0.0 for q in ("68", "95", "99.7", "99.99"))


def test_offset_and_affine_predictions():
    truth = _truth()
    torch.testing.assert_close(rmse(truth + 0.5, truth, LAT), torch.tensor([0.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(rmse_above(truth - 2.0, truth, LAT), torch.full((4, 2), 2.0, dtype=torch.float64))
    # a different affine map per sample is still a perfect spatial pattern
    scale = torch.tensor([1.0, 3.0, 0.5])[:, None, None, None]
    torch.testing.assert_close(pearson(scale * truth + 7 * scale, truth, LAT), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(pearson(-truth, truth, LAT), -torch.ones(2, dtype=torch.float64))


def test_pearson_is_per_sample_not_pooled():
    """Samples that differ by large offsets: getting the offsets right but the patterns wrong scores ~1
    when pooled over samples, but ~0 per sample (what is scored)."""
    torch.manual_seed(2)
    offsets = 100.0 * torch.arange(8.0)[:, None, None, None]
    truth = offsets + torch.randn(8, 1, H, W)
    pred = offsets + torch.randn(8, 1, H, W)  # independent patterns
    pooled = np.corrcoef(pred.flatten().numpy(), truth.flatten().numpy())[0, 1]
    assert pooled > 0.99 and abs(pearson(pred, truth, LAT).item()) < 0.1


def test_percentile_thresholds_are_per_grid_point():
    # truth at (n, h, w) = 100 h + n: the warm rows are warm in every sample, the extremes of a place are
    # its largest n; a global threshold would pick the warmest row only
    n = 10
    truth = (100.0 * torch.arange(H)[None, None, :, None] + torch.arange(n, dtype=torch.float64)[:, None, None, None]
             ).expand(n, 1, H, W).contiguous()
    thresholds = percentile_thresholds(truth, [50, 99.99])
    assert thresholds.shape == (2, 1, H, W)
    np.testing.assert_allclose(thresholds[0, 0], 100.0 * np.arange(H)[:, None] + 4.5 + 0 * np.arange(W))
    top = truth == truth.max(dim=0, keepdim=True).values  # each point's largest value (n = 9), every row
    assert rmse_above(truth + 3 * top, truth, LAT, [99.99]).item() == pytest.approx(3.0)
    assert rmse_above(truth + 3 * ~top, truth, LAT, [99.99]).item() == 0.0
    # error 1 on the samples n >= 5 of every point: exactly what q = 50 selects
    upper = torch.arange(n)[:, None, None, None] >= 5
    assert rmse_above(truth + upper, truth, LAT, [50]).item() == pytest.approx(1.0)
    assert rmse(truth + upper, truth, LAT).item() == pytest.approx(np.sqrt(0.5))


def test_ssim_of_constant_fields_uses_the_fixed_data_range():
    a, b = 2.0, 3.0
    value = ssim_per_sample(torch.full((1, 1, 12, 12), a), torch.full((1, 1, 12, 12), b), [DATA_RANGE["t2m"]])
    c1 = (0.01 * DATA_RANGE["t2m"]) ** 2
    assert value.item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-9)


def test_ssim_of_a_sample_does_not_depend_on_the_rest_of_the_set():
    truth = _truth(2, 1)
    noisy = truth + 2.0 * torch.randn_like(truth)
    alone = ssim(noisy[:1], truth[:1], ["t2m"])
    wild = torch.cat([truth[:1], 1000.0 * truth[1:]])  # a second sample with a huge range
    both = ssim_per_sample(torch.cat([noisy[:1], wild[1:]]), wild, [DATA_RANGE["t2m"]])
    assert both[0, 0].item() == pytest.approx(alone.item(), rel=1e-12)
    assert 0.0 < alone.item() < 0.95  # noise lowers it


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        rmse(torch.zeros(1, 1, H, W), torch.zeros(1, 2, H, W), LAT)
    with pytest.raises(ValueError, match="channel names"):
        downscaling_scores(torch.zeros(1, 1, H, W), torch.zeros(1, 1, H, W), LAT, ["a", "b"])
    with pytest.raises(ValueError, match="no SSIM data range"):
        ssim(torch.zeros(1, 1, H, W), torch.zeros(1, 1, H, W), ["q700"])
    with pytest.raises(ValueError, match="win_size"):  # scikit-image's own check
        ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), ["t2m"])
