"""ELM spin-up emulator: R^2 and baseline with known answers, encoder/head shapes, pretrained loading, sampler."""
import numpy as np
import pytest
import torch
import xarray as xr

from orbit.config import FinetuneConfig
from orbit.synthetic import land_model as lm
from orbit.data.elm_dataset import (FEATURE_NAMES, MAP_VARS, ElmArrays, OutputTransform, forcing_features,
                                    perturbed_sites)
from orbit.models.elm_emulator import ElmEmulatorConfig, ElmSpinupEmulator
from orbit.models.registry import create_model
from orbit.metrics.emulator import r2_score
from orbit.tasks.elm_spinup import CellSampler, mlp_fit_predict, r2_table, relative_distance, ridge_fit_predict
from orbit.train.finetune import prepare_model

D, DEPTH, HEADS = 32, 2, 2


def _config(**kw):
    base = dict(embed_dim=D, depth=DEPTH, num_heads=HEADS, mlp_ratio=4.0, qk_norm=True, n_months=12, n_forcing=3,
                n_static=9, n_map=7, patch=3, n_outputs=39, static_tokens=2)
    return ElmEmulatorConfig(**{**base, **kw})


def _inputs(b=5, patch=3):
    return torch.randn(b, 12, 3), torch.randn(b, 9), torch.randn(b, 7, patch, patch)


def test_r2_known_answers():
    true = np.array([[1.0, 2.0], [2.0, 2.0], [3.0, 2.0]])
    np.testing.assert_allclose(r2_score(true, true)[0], 1.0)
    np.testing.assert_allclose(r2_score(np.full((3, 2), 2.0), true)[0], 0.0)  # predicting the mean
    # residuals (0.5, 0, -0.5): SSres = 0.5, SStot = 2 -> 0.75
    np.testing.assert_allclose(r2_score(np.array([[0.5], [2.0], [3.5]]), true[:, :1]), [0.75])
    assert np.isnan(r2_score(true, true)[1])  # a constant output has no R^2


def test_ridge_baseline_recovers_a_linear_map():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 4))
    y = x @ np.array([[1.0], [-2.0], [0.5], [0.0]]) + 3.0
    np.testing.assert_allclose(ridge_fit_predict(x, y, x[:5], alpha=1e-10), y[:5], atol=1e-6)


def test_mlp_baseline_learns_what_ridge_cannot():
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, (600, 3))
    y = np.stack([np.sin(2 * x[:, 0]) + x[:, 1] ** 2, x[:, 2]], axis=1)
    train, test = slice(0, 500), slice(500, None)
    mlp = mlp_fit_predict(x[train], y[train], x[test], steps=800, batch_size=64, lr=3e-3, hidden=64)
    ridge = ridge_fit_predict(x[train], y[train], x[test])
    assert r2_score(mlp, y[test])[0] > 0.95 > 0.5 > r2_score(ridge, y[test])[0]
    state = torch.random.get_rng_state()
    first, again = (mlp_fit_predict(x[train], y[train], x[test], steps=5, batch_size=8, lr=3e-3) for _ in range(2))
    np.testing.assert_array_equal(first, again)  # seeded ...
    assert torch.equal(torch.random.get_rng_state(), state)  # ... and the global RNG is left alone


def test_relative_distance_and_independent_outputs_counted_once():
    truth = np.array([[100.0, 0.0, 2.0]])
    np.testing.assert_allclose(relative_distance(np.array([[90.0, 5.0, 3.0]]), truth), [[0.1, np.nan, 0.5]])
    r2 = {name: 0.99 for name in lm.OUTPUTS}
    r2["soil3n"] = 0.5  # soil3c / CN_soil: listed, not counted among the independent outputs
    rows = {line.split("|")[1].strip(): line for line in r2_table({"a": r2}).splitlines()}
    assert "0.9900" in rows["**min, independent**"] and "0.5000" in rows["**min, all 39**"]
    assert "soil3c / CN_soil" in rows["soil3n"] and "independent" in rows["soil3c"]


def test_output_transform_round_trips_and_takes_the_root_of_nonnegative_outputs_only():
    y = np.array([[1.0, -1.0, 0.0], [100.0, 2.0, 4.0], [1e4, 3.0, 16.0]])
    tf = OutputTransform(y)
    assert tf.sqrt.tolist() == [True, False, True]
    np.testing.assert_allclose(tf.inverse(tf.forward(y)), y, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(tf.forward(y).mean(axis=0), 0.0, atol=1e-12)
    # third column: roots (0, 2, 4) -> mean 2, std sqrt(8/3)
    np.testing.assert_allclose(tf.forward(y)[:, 2], np.array([-2.0, 0.0, 2.0]) / np.sqrt(8 / 3))
    assert tf.inverse(np.array([[-50.0, 0.0, -50.0]]))[0, 2] == 0.0  # a pool never comes back negative


def test_encoders_and_head_shapes():
    model = ElmSpinupEmulator(_config())
    f, s, p = _inputs()
    assert model.tokens(f, s, p).shape == (5, model.config.num_tokens, D) and model.config.num_tokens == 1 + 12 + 2 + 9
    assert model.forcing_encoder(f).shape == (5, 12, D)
    assert model.static_encoder(s).shape == (5, 2, D)
    assert model.spatial_encoder(p).shape == (5, 9, D)
    out = model(f, s, p)
    assert out.shape == (5, 39) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="forcing must be"):
        model(torch.randn(5, 11, 3), s, p)
    with pytest.raises(ValueError, match="odd"):
        _config(patch=4)


def test_forcing_encoder_is_periodic_in_the_month():
    """A cycled climatology has no first month: rolling the series rolls the conv features."""
    enc = ElmSpinupEmulator(_config()).forcing_encoder
    f = torch.randn(2, 12, 3)
    rolled = enc.conv(torch.roll(f, 3, dims=1).transpose(1, 2))
    torch.testing.assert_close(rolled, torch.roll(enc.conv(f.transpose(1, 2)), 3, dims=2))


@pytest.fixture
def pretrained_file(tmp_path):
    torch.manual_seed(1)
    vit = create_model("tiny", embed_dim=D, depth=DEPTH, num_heads=HEADS)
    path = tmp_path / "pretrained.pt"
    torch.save(vit.state_dict(), path)
    return vit, path


def test_pretrained_blocks_load_and_replaced_parts_stay_new(pretrained_file):
    vit, path = pretrained_file
    torch.manual_seed(2)
    fresh = ElmSpinupEmulator(_config())
    head_before = fresh.head[0].weight.clone()
    model = prepare_model(fresh, FinetuneConfig(init=str(path), replace=list(ElmSpinupEmulator.NEW_MODULES)))
    for name, tensor in vit.blocks.state_dict().items():
        torch.testing.assert_close(model.blocks.state_dict()[name], tensor)
    torch.testing.assert_close(model.norm.weight, vit.norm.weight)
    torch.testing.assert_close(model.head[0].weight, head_before)
    with pytest.raises(ValueError, match="forcing_encoder"):  # a new part must be named in finetune.replace
        prepare_model(ElmSpinupEmulator(_config()), FinetuneConfig(init=str(path), replace=["head"]))


def test_freezing_the_backbone_trains_only_the_new_parts(pretrained_file):
    _, path = pretrained_file
    model = prepare_model(ElmSpinupEmulator(_config()), FinetuneConfig(
        init=str(path), freeze="backbone", replace=list(ElmSpinupEmulator.NEW_MODULES)))
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert "blocks" not in trainable and {"head", "forcing_encoder", "norm"} <= trainable
    model = prepare_model(ElmSpinupEmulator(_config()), FinetuneConfig(
        init=str(path), freeze="all_but_head", replace=list(ElmSpinupEmulator.NEW_MODULES)))
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {"norm", "head"}


def test_cell_sampler_resumes_and_splits_ranks():
    cells = np.arange(20)
    a = CellSampler(cells, 3, seed=0, rank=0, world_size=1)
    it = iter(a)
    first = [next(it) for _ in range(8)]  # crosses the epoch boundary (7 batches, the last one wraps)
    state = a.state_dict()
    assert state == {"epoch": 1, "step_in_epoch": 1, "seed": 0, "global_batch_size": 3}
    expected = [next(it) for _ in range(5)]
    b = CellSampler(cells, 3, seed=0, rank=0, world_size=1)
    b.load_state_dict(state)
    resumed = iter(b)
    for want in expected:
        np.testing.assert_array_equal(next(resumed), want)
    assert len(np.unique(np.concatenate(first[:7]))) == 20  # every cell once per epoch
    r0 = next(iter(CellSampler(cells, 10, 0, 0, 2)))
    r1 = next(iter(CellSampler(cells, 10, 0, 1, 2)))
    assert set(r0).isdisjoint(r1) and len(r0) + len(r1) == 20


def test_forcing_features_known_answers():
    """At a constant 25 degC the Lloyd-Taylor factor is 1; the decomposition factor is f_T * f_W; a frozen
    year has no potential production."""
    t = np.stack([np.full(12, 25.0), np.full(12, -25.0)])
    w = np.full((2, 12), 0.5)
    rad = np.full((2, 12), 200.0)
    f = np.exp(forcing_features(t, w, rad, np.array([0, 2]))) - 1e-3
    col = {name: f[:, j] for j, name in enumerate(FEATURE_NAMES)}
    assert f.shape == (2, len(FEATURE_NAMES))
    np.testing.assert_allclose(col["f_temp_mean"][0], 1.0, rtol=1e-9)
    np.testing.assert_allclose(col["xi_mean"][0], lm.century_moisture(np.array(0.5)), rtol=1e-9)
    np.testing.assert_allclose(col["leach_mean"], 2 * 0.25, rtol=1e-9)
    assert col["gpp_pot_sum"][0] > 100 and col["gpp_pot_sum"][1] < 1e-3


def test_perturbed_sites_stay_valid_and_keep_the_pft():
    site = lm.Site(clay=np.array([0.05, 0.3, 0.5]), sand=np.array([0.85, 0.4, 0.05]), pft=np.array([0, 1, 3]),
                   ndep=np.array([0.1, 1.0, 2.1]))
    copies = perturbed_sites(site, 4, seed=0)  # lm.Site validates clay + sand <= 1 itself
    assert copies.clay.shape == (12,) and (copies.pft == np.tile(site.pft, 4)).all()
    assert (copies.clay >= 0.05).all() and (copies.clay <= 0.5).all() and (copies.clay + copies.sand <= 0.95).all()
    assert (copies.ndep >= 0.1).all() and (copies.ndep <= 2.1).all()
    assert np.abs(copies.clay - np.tile(site.clay, 4)).max() > 0.01  # they do differ from the originals


def _tiny_store(n=6):
    """A hand-made store of `n` cells on a 2x3 grid with the variables ElmArrays reads; random outputs."""
    rng = np.random.default_rng(0)
    cell, fdims = ("cell",), ("cell", "month")
    data = {v: (fdims, rng.uniform(0.1, 1.0, (n, 12))) for v in ("tair", "soil_moisture", "radiation")}
    data.update({v: (cell, rng.uniform(0.1, 0.4, n)) for v in ("clay", "sand", "ndep", "elevation", "latitude")})
    data.update({v: (cell, rng.uniform(1.0, 50.0, n)) for v in lm.OUTPUTS})
    data.update({f"map_{v}": (("lat", "lon"), rng.standard_normal((2, 3))) for v in MAP_VARS})
    rows, cols = np.divmod(np.arange(n), 3)
    data.update(pft=(cell, np.arange(n) % 4), split=(cell, (np.arange(n) >= 4).astype(np.int8)), row=(cell, rows),
                col=(cell, cols))
    return xr.Dataset(data)


def test_targets_are_the_learned_outputs_and_predictions_derive_nloss():
    """The network is trained on lm.LEARNED_OUTPUTS only; turning its predictions into outputs puts every
    learned value back and sets nloss = ndep + nfix in physical units (whatever the store's nloss was)."""
    ds = _tiny_store()
    arrays = ElmArrays(ds, patch=1)
    assert arrays.target.shape == (6, len(lm.LEARNED_OUTPUTS)) and arrays.truth.shape == (6, len(lm.OUTPUTS))
    cells = np.array([5, 1, 2])
    out = arrays.outputs(arrays.target[cells].astype(np.float64), cells)
    col = {name: out[:, j] for j, name in enumerate(lm.OUTPUTS)}
    for name in lm.LEARNED_OUTPUTS:
        np.testing.assert_allclose(col[name], ds[name].values[cells], rtol=1e-5)
    np.testing.assert_allclose(col["nloss"], ds.ndep.values[cells] + col["nfix"], rtol=1e-12)
    assert not np.allclose(col["nloss"], ds.nloss.values[cells])  # derived, not read from the truth
