"""The fused variable front end computes the same function (and gradients) as the explicit one."""
import pytest
import torch

from orbit.models import OrbitConfig, OrbitViT
from orbit.models.layers import VariableAggregation, VariablePatchEmbed, patchify

VOCAB = ("t2m", "u10", "v10", "z500", "t850", "q850", "r700")


def pair(**overrides):
    """Fused and unfused models holding identical parameters."""
    kwargs = dict(variables=VOCAB, img_size=(8, 12), patch_size=2, embed_dim=32, depth=1, num_heads=4,
                  agg_heads=4, qk_norm=True)
    torch.manual_seed(0)
    fused = OrbitViT(OrbitConfig(**{**kwargs, **overrides}, fused_frontend=True)).double()
    unfused = OrbitViT(OrbitConfig(**{**kwargs, **overrides}, fused_frontend=False)).double()
    unfused.load_state_dict(fused.state_dict())
    return fused, unfused


def run(model, x, ids, lead, mask):
    x = x.clone().requires_grad_(True)
    model.zero_grad()
    out = model(x, ids, lead, mask)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return out.detach(), x.grad, grads


@pytest.mark.parametrize("agg_heads", [4, 2])
@pytest.mark.parametrize("with_mask", [False, True])
def test_outputs_and_gradients_match(agg_heads, with_mask):
    fused, unfused = pair(agg_heads=agg_heads)
    gen = torch.Generator().manual_seed(1)
    ids = torch.tensor([5, 2, 0, 6, 3])  # subset of the vocabulary, permuted
    x = torch.randn(3, 5, 8, 12, generator=gen, dtype=torch.float64)
    lead = torch.tensor([6.0, 12.0, 240.0], dtype=torch.float64)
    mask = None
    if with_mask:
        mask = torch.ones(3, 5, dtype=torch.bool)
        mask[0, 0] = mask[1, 3] = mask[1, 4] = False
    out_f, dx_f, grads_f = run(fused, x, ids, lead, mask)
    out_u, dx_u, grads_u = run(unfused, x, ids, lead, mask)
    torch.testing.assert_close(out_f, out_u, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dx_f, dx_u, rtol=1e-10, atol=1e-12)
    assert grads_f.keys() == grads_u.keys()
    for name in grads_f:
        torch.testing.assert_close(grads_f[name], grads_u[name], rtol=1e-9, atol=1e-12, msg=name)
    # the selected variables' patch weights get gradients, the unselected ones exactly none
    assert grads_f["patch_embed.weight"][[1, 4]].abs().max() == 0
    assert grads_f["patch_embed.weight"][[5, 2, 0, 6, 3]].abs().amin(dim=(1, 2, 3)).min() > 0


def test_fp32_equality_at_wide_width():
    """In fp32 at a realistic width the two orders of summation agree to ~1e-5 relative."""
    torch.manual_seed(0)
    embed = VariablePatchEmbed(vocab_size=24, patch_size=4, embed_dim=256)
    agg = VariableAggregation(256, num_heads=8)
    ids = torch.randperm(24)[:20]
    x = torch.randn(2, 20, 16, 32)
    token_bias = torch.randn(20, 256) * 0.1
    mask = torch.rand(2, 20) > 0.3
    weight, bias = embed.select(ids)
    explicit = agg(embed(x, ids) + token_bias[:, None], mask)
    fused = agg.forward_fused(patchify(x, 4), weight, bias + token_bias, mask)
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-5 * explicit.abs().max().item())


def _largest_saved_tensor(model, inputs) -> int:
    """numel of the largest tensor autograd keeps for backward during one forward."""
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.embed(*inputs)
    return max(sizes)


def test_fused_never_keeps_per_variable_tokens():
    fused, unfused = pair(embed_dim=64, agg_heads=4)
    x = torch.randn(2, 7, 8, 12, dtype=torch.float64)
    inputs = (x, torch.arange(7), torch.tensor([6.0, 6.0], dtype=torch.float64), None)
    per_variable_tokens = 2 * 7 * fused.config.num_tokens * 64  # (B, V, L, D)
    assert _largest_saved_tensor(unfused, inputs) >= per_variable_tokens
    assert _largest_saved_tensor(fused, inputs) < per_variable_tokens / 2
