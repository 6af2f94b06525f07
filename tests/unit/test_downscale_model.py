"""DownscaleViT: shapes, the bicubic starting point, and loading pretrained blocks with replaced parts."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from orbit.config import FinetuneConfig
from orbit.models.downscale_net import DownscaleViT, PixelShuffleHead, upsample_bicubic
from orbit.models.registry import create_model, get_config
from orbit.tasks.downscale import StaticsRegression, bicubic_baseline
from orbit.train.finetune import prepare_model

SMALL = dict(embed_dim=32, depth=2, num_heads=2)
CHANNELS = ("t2m", "tp")


def _model(**overrides) -> DownscaleViT:
    config = get_config("tiny", variables=CHANNELS, img_size=(64, 128), patch_size=8, **{**SMALL, **overrides})
    return DownscaleViT(config, scale=4, num_statics=2, head_features=8, refine_hidden=8)


def test_pixel_shuffle_head_shape():
    head = PixelShuffleHead(embed_dim=32, features=5, patch_size=8)
    assert head(torch.randn(2, 8 * 16, 32), (8, 16)).shape == (2, 5, 64, 128)


def test_forward_shape_and_untrained_model_is_bicubic():
    torch.manual_seed(0)
    model = _model()
    coarse, statics = torch.randn(3, 2, 16, 32), torch.randn(3, 2, 64, 128)
    out = model(coarse, statics)
    assert out.shape == (3, 2, 64, 128)
    torch.testing.assert_close(out, upsample_bicubic(coarse, 4))  # the last conv starts at zero
    out.square().mean().backward()  # and every new part is still reached by gradients through it
    assert model.refine.layers[-1].conv.weight.grad.abs().sum() > 0


def test_input_errors_name_the_expected_shape():
    model = _model()
    with pytest.raises(ValueError, match=r"coarse must be \(B, C, H, W\) = \(B, 2, 16, 32\)"):
        model(torch.zeros(1, 2, 32, 64), torch.zeros(1, 2, 64, 128))
    with pytest.raises(ValueError, match="statics must be"):
        model(torch.zeros(1, 2, 16, 32), torch.zeros(1, 2, 32, 64))


def _keys_kernel(x: torch.Tensor, a: float = -0.75) -> torch.Tensor:
    """The cubic-convolution kernel of torch's bicubic mode (Keys, a = -0.75)."""
    x = x.abs()
    near = (a + 2) * x**3 - (a + 3) * x**2 + 1
    far = a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
    return torch.where(x <= 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def test_bicubic_of_an_impulse_is_the_cubic_kernel():
    coarse = torch.zeros(1, 1, 16, 32, dtype=torch.float64)
    coarse[0, 0, 8, 16] = 1.0
    fine = upsample_bicubic(coarse, 4)
    offset = lambda n, centre: (torch.arange(n, dtype=torch.float64) + 0.5) / 4 - 0.5 - centre  # noqa: E731
    expected = _keys_kernel(offset(64, 8))[:, None] * _keys_kernel(offset(128, 16))[None, :]
    torch.testing.assert_close(fine[0, 0], expected)
    torch.testing.assert_close(fine.sum(), torch.tensor(16.0, dtype=torch.float64))  # mass x s^2


def test_bicubic_keeps_constants():
    constant = torch.full((1, 1, 16, 32), 7.0)
    torch.testing.assert_close(upsample_bicubic(constant, 4), torch.full((1, 1, 64, 128), 7.0))


def test_bicubic_is_periodic_in_longitude():
    lon = torch.arange(32, dtype=torch.float64) * 2 * torch.pi / 32
    coarse = torch.cos(lon)[None, None, None, :].expand(1, 1, 16, 32)
    fine = upsample_bicubic(coarse, 4)
    # the first and last fine columns sit symmetrically around the wrap point
    torch.testing.assert_close(fine[..., 0], fine[..., 3])
    torch.testing.assert_close(fine[..., 1], fine[..., 2])


def test_bicubic_baseline_keeps_precipitation_non_negative():
    coarse = torch.zeros(1, 2, 16, 32)
    coarse[:, :, 8, 16] = 10.0  # a spike: cubic interpolation undershoots beside it
    out = bicubic_baseline(coarse, 4, ("t2m", "tp"))
    assert out[:, 0].min() < 0 and out[:, 1].min() == 0.0


class _PhysicalPairs:
    """Duck-typed DownscaleDataset whose fields are stored in physical units (to_physical is the identity)."""

    def __init__(self, coarse, fine, statics):
        self.coarse, self.fine, self.statics = coarse, fine, statics.numpy()
        self.scale, self.channels, self.lat = 4, CHANNELS, np.linspace(-88.6, 88.6, fine.shape[-2])

    def __len__(self):
        return len(self.coarse)

    def batch(self, indices):
        index = list(indices)
        return SimpleNamespace(coarse=self.coarse[index], fine=self.fine[index])

    def to_physical(self, fields):
        return fields


def test_statics_regression_recovers_a_linear_terrain_correction():
    """Fine fields = bicubic + a linear map of the statics' fine-scale detail (in log1p space for tp): the
    baseline fitted on them reproduces them, and its correction is fixed by the training data alone."""
    torch.manual_seed(0)
    statics = torch.randn(2, 64, 128, dtype=torch.float64)
    detail = statics - upsample_bicubic(F.avg_pool2d(statics[None], 4), 4)[0]
    coarse = (torch.rand(20, 2, 16, 32, dtype=torch.float64) * torch.tensor([30.0, 5.0])[:, None, None]
              + torch.tensor([0.5, 3.0])[:, None, None])
    bicubic = bicubic_baseline(coarse, 4, CHANNELS)
    t2m = bicubic[:, 0] - 2.0 * detail[0] + 0.5
    tp = torch.expm1(torch.log1p(bicubic[:, 1]) + 0.2 * detail[1] - 0.1 * statics[0])
    pairs = _PhysicalPairs(coarse, torch.stack([t2m, tp], dim=1), statics)
    model = StaticsRegression.fit(pairs, batch_size=6)  # batches that do not divide the set
    torch.testing.assert_close(model.predict(bicubic), pairs.fine)
    torch.testing.assert_close(model.beta[0], torch.tensor([0.5, 0, 0, -2.0, 0], dtype=torch.float64))
    assert model.predict(torch.zeros(1, 2, 64, 128, dtype=torch.float64))[:, 1].min() >= 0.0  # tp stays >= 0


@pytest.fixture
def pretrained_file(tmp_path):
    torch.manual_seed(1)
    pretrained = create_model("tiny", img_size=(16, 32), **SMALL)
    path = tmp_path / "pretrained.pt"
    torch.save(pretrained.state_dict(), path)
    return path, pretrained


def test_prepare_model_loads_blocks_and_norm_replaces_the_rest(pretrained_file):
    path, pretrained = pretrained_file
    model = prepare_model(_model(), FinetuneConfig(init=str(path), replace=["embed", "head", "refine"]))
    for name, value in pretrained.state_dict().items():
        if name.startswith(("blocks.", "norm.")):
            torch.testing.assert_close(model.state_dict()[name], value)
    with pytest.raises(ValueError, match="embed.weight"):
        prepare_model(_model(), FinetuneConfig(init=str(path), replace=["head", "refine"]))
    with pytest.raises(ValueError, match="shape"):  # another width does not fit the pretrained blocks
        prepare_model(_model(embed_dim=64), FinetuneConfig(init=str(path), replace=["embed", "head", "refine"]))


@pytest.mark.parametrize("policy, frozen", [("backbone", ("blocks",)), ("all_but_head", ("blocks", "norm"))])
def test_freezing(pretrained_file, policy, frozen):
    path, _ = pretrained_file
    model = prepare_model(_model(), FinetuneConfig(init=str(path), freeze=policy, replace=["embed", "head", "refine"]))
    for name, param in model.named_parameters():
        assert param.requires_grad == (not name.startswith(frozen)), name
