"""OrbitViT behaviour: shapes, variable masking/subsets, embeddings, config errors, reference parity."""
import dataclasses

import pytest
import torch

from orbit.models import OrbitConfig, OrbitViT, create_model
from orbit.models.layers import Attention
from orbit.models.reference import ReferenceClimaX, load_from_orbit

VOCAB = ("t2m", "u10", "v10", "z500", "t850", "q850")


def small_config(**overrides) -> OrbitConfig:
    kwargs = dict(variables=VOCAB, out_variables=("t2m", "z500"), img_size=(8, 16), patch_size=2,
                  embed_dim=32, depth=2, num_heads=4, agg_heads=2, qk_norm=True)
    return OrbitConfig(**{**kwargs, **overrides})


def make_inputs(config: OrbitConfig, batch: int = 3, var_ids=(3, 0, 5, 1), seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, len(var_ids), *config.img_size, generator=gen)
    lead = torch.linspace(6.0, 72.0, batch)
    return x, torch.tensor(var_ids), lead


@pytest.fixture(params=[True, False], ids=["fused", "unfused"])
def model(request):
    torch.manual_seed(0)
    return OrbitViT(small_config(fused_frontend=request.param)).eval()


def test_forward_shape_and_stage_decomposition(model):
    x, ids, lead = make_inputs(model.config)
    out = model(x, ids, lead)
    assert out.shape == (3, 2, 8, 16)
    tokens = model.embed(x, ids, lead)
    assert tokens.shape == (3, model.config.num_tokens, 32)
    for block in model.blocks:
        tokens = block(tokens)
    torch.testing.assert_close(model.forward_head(tokens), out)


def test_masked_channel_values_have_no_influence(model):
    x, ids, lead = make_inputs(model.config)
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[0, 1] = mask[2, 3] = False
    garbage = x.clone()
    garbage[0, 1] = 1e6
    garbage[2, 3] = float("nan")
    garbage.requires_grad_(True)
    out = model(garbage, ids, lead, mask)
    torch.testing.assert_close(out, model(x, ids, lead, mask), rtol=0, atol=0)
    out.sum().backward()
    assert garbage.grad[0, 1].abs().max() == 0 and garbage.grad[2, 3].abs().max() == 0
    assert garbage.grad[0, 0].abs().max() > 0


def test_masking_a_channel_equals_dropping_it(model):
    x, ids, lead = make_inputs(model.config, batch=1)
    mask = torch.tensor([[True, False, True, True]])
    keep = [0, 2, 3]
    torch.testing.assert_close(model(x, ids, lead, mask), model(x[:, keep], ids[keep], lead), rtol=1e-5, atol=1e-6)


def test_channel_order_does_not_matter(model):
    """Aggregation is a softmax over variables: permuting channels with their ids is a no-op."""
    x, ids, lead = make_inputs(model.config)
    perm = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(model(x[:, perm], ids[perm], lead), model(x, ids, lead), rtol=1e-5, atol=1e-6)


def test_variable_identity_and_lead_time_change_the_output(model):
    x, ids, lead = make_inputs(model.config)
    base = model(x, ids, lead)
    assert not torch.allclose(model(x, torch.tensor([3, 0, 5, 2]), lead), base)
    assert not torch.allclose(model(x, ids, lead + 24.0), base)


def test_position_embedding_is_fixed_and_not_checkpointed(model):
    assert "pos_embed" not in model.state_dict()
    assert not any(name == "pos_embed" for name, _ in model.named_parameters())
    pos = model.pos_embed  # (L, D): distinct rows for distinct grid positions
    assert pos.shape == (model.config.num_tokens, 32)
    assert torch.cdist(pos, pos).fill_diagonal_(1.0).min() > 0


def test_meta_build_then_materialize():
    config = small_config()
    with torch.device("meta"):
        model = OrbitViT(config)
    model.to_empty(device="cpu")
    model.init_weights()
    torch.testing.assert_close(model.pos_embed, OrbitViT(config).pos_embed)
    assert torch.isfinite(model(*make_inputs(config))).all()


def test_bf16_autocast_close_to_fp32(model):
    x, ids, lead = make_inputs(model.config)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x, ids, lead)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), model(x, ids, lead), rtol=0.1, atol=0.1)


def test_blocks_are_identical_modules_with_separate_qkv():
    model = OrbitViT(small_config(depth=3, drop_path=0.1))
    assert len({str(b) for b in model.blocks}) == 1
    attn = model.blocks[0].attn
    assert {"q_proj", "k_proj", "v_proj", "proj"} <= {n for n, _ in attn.named_children()}


def test_attention_runs_on_a_head_shard():
    """Column-sharding q/k/v by whole heads and row-sharding proj (what TP does) reproduces the output:
    the module infers its local head count from the projection sizes."""
    torch.manual_seed(0)
    full = Attention(16, num_heads=4)
    x = torch.randn(2, 5, 16)
    shards = []
    for rows in (slice(0, 8), slice(8, 16)):
        shard = Attention(16, num_heads=4)
        with torch.no_grad():
            for name in ("q_proj", "k_proj", "v_proj"):
                src, dst = getattr(full, name), getattr(shard, name)
                dst.weight = torch.nn.Parameter(src.weight[rows].clone())
                dst.bias = torch.nn.Parameter(src.bias[rows].clone())
            shard.proj.weight = torch.nn.Parameter(full.proj.weight[:, rows].clone())
            shard.proj.bias = torch.nn.Parameter(full.proj.bias / 2)
        shards.append(shard(x))
    torch.testing.assert_close(sum(shards), full(x), rtol=1e-5, atol=1e-6)


def test_drop_path_is_stochastic_only_in_training():
    torch.manual_seed(0)
    model = OrbitViT(small_config(drop_path=0.5))
    inputs = make_inputs(model.config)
    model.train()
    assert not torch.allclose(model(*inputs), model(*inputs))
    model.eval()
    torch.testing.assert_close(model(*inputs), model(*inputs))


@pytest.mark.parametrize("fused", [True, False])
def test_matches_reference_climax(fused):
    torch.manual_seed(0)
    model = OrbitViT(small_config(fused_frontend=fused)).eval()
    ref = load_from_orbit(ReferenceClimaX(model.config), model).eval()
    x, ids, lead = make_inputs(model.config)
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[1, 0] = False
    torch.testing.assert_close(model(x, ids, lead, mask), ref(x, ids, lead, mask), rtol=1e-5, atol=1e-5)


def test_reference_rejects_a_different_architecture():
    with pytest.raises(ValueError, match="configs differ"):
        load_from_orbit(ReferenceClimaX(small_config(depth=1)), OrbitViT(small_config()))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(img_size=(9, 16)), "not divisible by patch_size"),
        (dict(num_heads=5), "not divisible by num_heads"),
        (dict(agg_heads=3), "not divisible by agg_heads"),
        (dict(variables=("t2m", "t2m", "u10"), out_variables=None), "duplicate names"),
        (dict(out_variables=("t2m", "sst")), r"\['sst'\] are not in variables"),
        (dict(drop_path=1.0), "drop_path"),
        (dict(embed_dim=30, num_heads=2, agg_heads=2), "multiple of 4"),
        (dict(variables=()), "empty"),
    ],
)
def test_config_errors_name_the_problem(overrides, message):
    with pytest.raises(ValueError, match=message):
        small_config(**overrides)


def test_config_normalizes_lists_and_defaults():
    config = OrbitConfig(variables=["a", "b"], img_size=[4, 8], patch_size=2, embed_dim=16, depth=1, num_heads=2)
    assert config.variables == ("a", "b") and config.out_variables == ("a", "b") and config.img_size == (4, 8)
    assert config.agg_heads == 2 and config.num_tokens == 8
    assert config.indices_of(["b", "a"]) == (1, 0)
    with pytest.raises(ValueError, match="unknown variables"):
        config.indices_of(["c"])
    assert dataclasses.replace(config, depth=2).depth == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda x, ids, lead, mask: (x[..., :-2], ids, lead, mask), "x must be"),
        (lambda x, ids, lead, mask: (x, ids[:3], lead, mask), "var_ids must be"),
        (lambda x, ids, lead, mask: (x, ids, lead[:1], mask), "lead_hours must be"),
        (lambda x, ids, lead, mask: (x, ids, lead, mask[:, :2]), "var_mask must be"),
    ],
)
def test_input_shape_errors(change, message):
    model = OrbitViT(small_config())
    x, ids, lead = make_inputs(model.config)
    mask = torch.ones(3, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match=message):
        model(*change(x, ids, lead, mask))


def test_tiny_preset_trains_a_step():
    torch.manual_seed(0)
    model = create_model("tiny")
    config = model.config
    x = torch.randn(2, len(config.variables), *config.img_size)
    ids = torch.arange(len(config.variables))
    lead = torch.full((2,), 6.0)
    target = x[:, list(config.indices_of(config.out_variables))]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(3):
        loss = (model(x, ids, lead) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
