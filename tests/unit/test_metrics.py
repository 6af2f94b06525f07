"""Known-answer tests of the WeatherBench2-style metrics."""
import math

import numpy as np
import pytest
import torch

from orbit.metrics.weather import (SkillAccumulator, acc, acc_per_sample, lat_weighted_mse_loss, latitude_weights, rmse,
                           weighted_mse)

H, W = 8, 16
LAT = torch.linspace(-78.75, 78.75, H)  # cell centres of a regular 8-row grid


def test_latitude_weights_mean_one_and_cosine_shape():
    weights = latitude_weights(LAT)
    assert weights.mean().item() == pytest.approx(1.0, abs=1e-6)
    cos = torch.cos(torch.deg2rad(LAT))
    torch.testing.assert_close(weights / weights[0], cos / cos[0])
    torch.testing.assert_close(weights, weights.flip(0))  # hemispheres weigh the same


def test_latitude_weights_rejects_2d():
    with pytest.raises(ValueError, match=r"1-D \(H,\)"):
        latitude_weights(torch.zeros(2, 3))


def test_weighted_mse_weights_rows_by_area():
    pred, target = torch.zeros(1, 1, H, W), torch.zeros(1, 1, H, W)
    pred[0, 0, 0, :] = 2.0  # error only on the southernmost row
    expected = latitude_weights(LAT)[0] * 4.0 / H
    assert weighted_mse(pred, target, LAT)[0, 0].item() == pytest.approx(expected.item(), rel=1e-6)


def test_rmse_of_constant_offset_is_the_offset():
    target = torch.randn(5, 3, H, W)
    offsets = torch.tensor([0.5, 2.0, 3.0])
    pred = target + offsets[None, :, None, None]
    torch.testing.assert_close(rmse(pred, target, LAT), offsets)


def test_rmse_takes_the_root_after_the_time_mean():
    target = torch.zeros(2, 1, H, W)
    pred = torch.stack([torch.full((1, H, W), 1.0), torch.full((1, H, W), 3.0)])  # MSE 1 and 9
    assert rmse(pred, target, LAT).item() == pytest.approx(math.sqrt(5.0))


def test_acc_of_identical_fields_is_one_and_of_opposite_anomalies_minus_one():
    clim, anomaly = torch.randn(4, 2, H, W), torch.randn(4, 2, H, W)
    torch.testing.assert_close(acc(clim + anomaly, clim + anomaly, clim, LAT), torch.ones(2))
    torch.testing.assert_close(acc(clim + anomaly, clim - anomaly, clim, LAT), -torch.ones(2))


def test_acc_matches_the_documented_formula():
    gen = torch.Generator().manual_seed(0)
    pred, target, clim = (torch.randn(3, 2, H, W, generator=gen, dtype=torch.float64) for _ in range(3))
    w = np.cos(np.deg2rad(LAT.double().numpy()))[:, None]
    expected = np.zeros((3, 2))
    for b in range(3):
        for v in range(2):
            fa, oa = (pred - clim)[b, v].numpy(), (target - clim)[b, v].numpy()
            expected[b, v] = (w * fa * oa).sum() / np.sqrt((w * fa**2).sum() * (w * oa**2).sum())
    torch.testing.assert_close(acc_per_sample(pred, target, clim, LAT.double()), torch.from_numpy(expected))
    torch.testing.assert_close(acc(pred, target, clim, LAT.double()), torch.from_numpy(expected.mean(axis=0)))


def test_acc_is_not_recentred_by_the_spatial_mean():
    clim = torch.zeros(1, 1, H, W)
    pattern = torch.randn(1, 1, H, W)
    # adding a uniform anomaly changes the uncentred ACC (a centred one would stay 1)
    assert acc(pattern + 5.0, pattern, clim, LAT).item() < 0.99


def test_masked_channels_are_left_out():
    target = torch.zeros(2, 2, H, W)
    pred = torch.zeros(2, 2, H, W)
    pred[:, 0] = 1.0
    pred[1, 1] = 100.0  # absent in sample 1: must not count
    pred[0, 1] = 2.0
    mask = torch.tensor([[True, True], [True, False]])
    torch.testing.assert_close(weighted_mse(pred, target, LAT, mask), torch.tensor([[1.0, 4.0], [1.0, 0.0]]))
    assert lat_weighted_mse_loss(pred, target, LAT, mask).item() == pytest.approx(((1 + 4) / 2 + 1) / 2)
    torch.testing.assert_close(rmse(pred, target, LAT, mask), torch.tensor([1.0, 2.0]))
    assert lat_weighted_mse_loss(pred, target, LAT).item() == pytest.approx((1 + 4 + 1 + 1e4) / 4)


def test_loss_is_differentiable():
    pred = torch.zeros(1, 1, H, W, requires_grad=True)
    lat_weighted_mse_loss(pred, torch.ones(1, 1, H, W), LAT, torch.ones(1, 1, dtype=torch.bool)).backward()
    torch.testing.assert_close(pred.grad.sum(), torch.tensor(-2.0))


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="lat must have shape"):
        weighted_mse(torch.zeros(1, 1, H, W), torch.zeros(1, 1, H, W), LAT[:-1])
    with pytest.raises(ValueError, match="share one"):
        weighted_mse(torch.zeros(1, 1, H, W), torch.zeros(1, 2, H, W), LAT)


def _random_eval_set(gen):
    pred, target, clim = (torch.randn(12, 3, H, W, generator=gen) for _ in range(3))
    leads = torch.tensor([6.0, 24.0, 6.0, 24.0, 6.0, 6.0, 24.0, 24.0, 6.0, 24.0, 6.0, 24.0])
    mask = torch.rand(12, 3, generator=gen) > 0.3
    return pred, target, clim, leads, mask


def test_accumulator_over_split_batches_equals_one_shot():
    pred, target, clim, leads, mask = _random_eval_set(torch.Generator().manual_seed(1))
    accumulator = SkillAccumulator(["a", "b", "c"], [6, 24])
    for chunk in (slice(0, 5), slice(5, 7), slice(7, 12)):
        accumulator.update(pred[chunk], target[chunk], LAT, leads[chunk], clim[chunk], mask[chunk])
    for row, lead in enumerate((6.0, 24.0)):
        sel = leads == lead
        torch.testing.assert_close(accumulator.rmse()[row].float(), rmse(pred[sel], target[sel], LAT, mask[sel]))
        torch.testing.assert_close(accumulator.acc()[row].float(), acc(pred[sel], target[sel], clim[sel], LAT, mask[sel]))
    results = accumulator.as_dict()
    assert results["rmse/b/24h"] == pytest.approx(accumulator.rmse()[1, 1].item())
    assert len(results) == 2 * 2 * 3


def test_accumulator_states_sum_like_an_all_reduce():
    pred, target, clim, leads, mask = _random_eval_set(torch.Generator().manual_seed(2))
    whole, rank0, rank1 = (SkillAccumulator(["a", "b", "c"], [6, 24]) for _ in range(3))
    whole.update(pred, target, LAT, leads, clim, mask)
    rank0.update(pred[::2], target[::2], LAT, leads[::2], clim[::2], mask[::2])
    rank1.update(pred[1::2], target[1::2], LAT, leads[1::2], clim[1::2], mask[1::2])
    reduced = rank0.state() + rank1.state()  # what dist.all_reduce(SUM) leaves on every rank
    rank0.state().copy_(reduced)
    torch.testing.assert_close(rank0.rmse(), whole.rmse())
    torch.testing.assert_close(rank0.acc(), whole.acc())
    rank1.merge(SkillAccumulator(["a", "b", "c"], [6, 24]))
    with pytest.raises(ValueError, match="cannot merge"):
        rank1.merge(SkillAccumulator(["a", "b"], [6, 24]))


def test_accumulator_without_climatology_has_no_acc_and_rejects_unknown_leads():
    accumulator = SkillAccumulator(["a"], [6])
    accumulator.update(torch.ones(2, 1, H, W), torch.zeros(2, 1, H, W), LAT, torch.tensor([6.0, 6.0]))
    assert accumulator.rmse().item() == pytest.approx(1.0)
    assert math.isnan(accumulator.acc().item())
    with pytest.raises(ValueError, match=r"lead\(s\) \[12.0\] h are not among"):
        accumulator.update(torch.ones(1, 1, H, W), torch.zeros(1, 1, H, W), LAT, torch.tensor([12.0]))
