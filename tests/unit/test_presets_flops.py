"""Presets (sizes, overrides, errors) and analytic FLOPs / model_info."""
import json

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from orbit.models import OrbitConfig, OrbitViT, create_model, forward_flops, get_config, list_models, model_info
from orbit.models.presets import ORBIT_VARIABLES

NOMINAL_PARAMS = {"115m": 115e6, "1b": 1e9, "10b": 10e9, "113b": 113e9}


def test_all_presets_registered():
    assert set(list_models()) >= {"tiny", *NOMINAL_PARAMS}


@pytest.mark.parametrize("name", sorted(NOMINAL_PARAMS))
def test_orbit_presets_match_nominal_size_on_meta(name):
    with torch.device("meta"):
        model = create_model(name)
    params = sum(p.numel() for p in model.parameters())
    assert abs(params / NOMINAL_PARAMS[name] - 1) <= 0.10, params
    assert model.config.variables == ORBIT_VARIABLES and len(ORBIT_VARIABLES) == 91
    assert model.config.img_size == (128, 256)


def test_tiny_preset_is_cpu_sized():
    model = create_model("tiny")
    params = sum(p.numel() for p in model.parameters())
    assert 1e6 <= params <= 3e6
    assert model.config.num_tokens == 128


def test_overrides_and_their_derived_defaults():
    model = create_model("tiny", embed_dim=64)
    assert model.blocks[0].attn.q_proj.weight.shape == (64, 64)
    config = get_config("tiny", variables=("a", "b"), num_heads=2, embed_dim=64)
    assert config.out_variables == ("a", "b") and config.agg_heads == 2 and config.name == "tiny"


def test_unknown_preset_and_override_errors():
    with pytest.raises(ValueError, match=r"unknown model preset 'huge'.*'113b'.*'tiny'"):
        create_model("huge")
    with pytest.raises(ValueError, match=r"unknown OrbitConfig override\(s\) \['width'\].*embed_dim"):
        create_model("tiny", width=64)
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        create_model("tiny", num_heads=3)


def _measured_flops(model, inputs, train: bool) -> int:
    # the math SDPA backend decomposes into bmm ops that FlopCounterMode counts on CPU
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        out = model(*inputs)
        if train:
            out.sum().backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_analytic_flops_match_flop_counter(fused):
    config = OrbitConfig(variables=("a", "b", "c", "d", "e", "f"), out_variables=("a", "b"), img_size=(16, 32),
                         patch_size=4, embed_dim=64, depth=2, num_heads=4, agg_heads=2, fused_frontend=fused)
    model = OrbitViT(config)
    inputs = (torch.randn(3, 5, 16, 32), torch.tensor([4, 1, 0, 5, 2]), torch.ones(3))
    analytic = forward_flops(config, batch_size=3, num_input_vars=5)["total"]
    assert _measured_flops(model, inputs, train=False) == pytest.approx(analytic, rel=0.05)
    assert _measured_flops(model, inputs, train=True) == pytest.approx(3 * analytic, rel=0.05)


def test_fused_front_end_is_cheaper_at_orbit_width():
    config = get_config("115m")
    fused = forward_flops(config)["aggregation"]
    unfused = forward_flops(get_config("115m", fused_frontend=False))
    assert fused < (unfused["aggregation"] + unfused["tokenizer"]) / 10


def test_model_info_is_consistent_and_json_ready():
    info = model_info("tiny")
    json.dumps(info)
    model = create_model("tiny")
    params = sum(p.numel() for p in model.parameters())
    assert info["params"] == params
    assert info["params_by_part"]["blocks"] == sum(p.numel() for p in model.blocks.parameters())
    assert info["tokens_per_sample"] == 128
    assert info["flops_per_sample_train"] == 3 * info["flops_per_sample_fwd"]
    assert info["flops_per_sample_fwd"] == sum(info["flops_by_part_per_sample_fwd"].values())
    mem = info["memory_bytes_per_replica"]
    assert mem["fp32"]["weights"] == 4 * params and mem["fp32"]["total"] == 16 * params
    assert mem["bf16_mixed"]["grads"] == 2 * params


def test_model_info_of_largest_preset_needs_no_memory():
    info = model_info("113b")
    assert info["params"] > 1e11 and info["memory_bytes_per_replica"]["fp32"]["total"] > 1.6e12
    # 6 * params * tokens is the usual transformer estimate; attention scores add a little on top
    assert 1.0 < info["flops_per_sample_train"] / (6 * info["params"] * info["tokens_per_sample"]) < 1.3
