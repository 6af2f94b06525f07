"""Ulysses sequence parallelism over a transformer's tokens (ORBIT: its spatial tokens).

Each sp rank holds one band of L/sp consecutive tokens (B, L/sp, D) between `embed` and the head:
norms, MLPs and residuals are token-local, and each attention swaps sequence for heads with one
all-to-all of q, k, v (every rank then attends over all L tokens for h/sp heads, exactly as one
process would) and one all-to-all of the output back. Before the head the bands are all-gathered,
so the module's output is the full field, the same on every sp rank.

Gradients: every sp rank computes the same loss on the same full output, so the gather's backward
hands each rank only its own band's gradient, scaled by sp. The sum of the sp ranks' parameter
gradients is then sp times the single-process gradient, and averaging over sp (what FSDP does over
its "dp_shard_sp" mesh) gives it exactly.

Hook points, so that the same call works on a whole model and on pipeline-stage modules:
- a (sub)module whose class defines `embed` gets its `embed` output sliced to the band (first stage);
- a (sub)module whose class defines `forward_head` gets its input gathered first (last stage);
- every attention module the plan names routes its `F.scaled_dot_product_attention` call through Ulysses;
a stage with neither `embed` nor `forward_head` (a middle stage) takes and returns bands.
"""
from __future__ import annotations

from types import MethodType

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor
from torch.overrides import TorchFunctionMode

from .compat import all_gather, all_to_all_single


def apply_sequence_parallel(module: nn.Module, sp_mesh: DeviceMesh, attentions: list[nn.Module],
                            num_tokens: int | None = None) -> nn.Module:
    """Make `module` (a whole model or a pipeline stage of one) sequence parallel over `sp_mesh` (1-D), in place.

    `attentions` are the modules inside `module` whose `forward` calls `F.scaled_dot_product_attention`
    on (B, h, L, d) and that have `q_proj` and `head_dim` (the model family's plan names them);
    `num_tokens`, when the plan knows it, is checked against sp before any work.
    Apply after tensor parallelism (Ulysses then splits each tp rank's heads over sp) and before
    activation checkpointing, compile and FSDP.
    """
    _check_heads_divisible(attentions, sp_mesh.size())
    if num_tokens is not None:
        _check_tokens_divisible(num_tokens, sp_mesh.size())
    for sub in module.modules():
        if callable(getattr(type(sub), "embed", None)):
            sub.embed = MethodType(_then_keep_band(type(sub).embed, sp_mesh), sub)
        if callable(getattr(type(sub), "forward_head", None)):
            sub.forward_head = MethodType(_gather_bands_first(type(sub).forward_head, sp_mesh), sub)
    for attention in attentions:
        attention.forward = MethodType(_with_ulysses(type(attention).forward, sp_mesh), attention)
    return module


def _local_heads(attention: nn.Module) -> int:
    """Heads this rank computes: all of them, or num_heads / tp once tensor parallel sharded q_proj."""
    weight = attention.q_proj.weight
    rows = weight.to_local().shape[0] if isinstance(weight, DTensor) else weight.shape[0]
    return rows // attention.head_dim


def _check_heads_divisible(attentions: list[nn.Module], sp: int) -> None:
    heads = sorted({_local_heads(a) for a in attentions})
    bad = [h for h in heads if h % sp]
    if bad:
        raise ValueError(f"Ulysses sequence parallel splits each rank's attention heads over sp ranks: local heads "
                         f"{bad} (num_heads / tp) are not divisible by sp={sp}; choose sp dividing {heads[0]}")


def _check_tokens_divisible(num_tokens: int, sp: int) -> None:
    if num_tokens % sp:
        raise ValueError(f"sequence parallel needs the token count L={num_tokens} divisible by sp={sp}; "
                         f"choose sp dividing {num_tokens} (or another patch size / image size)")


def _then_keep_band(embed, mesh: DeviceMesh):
    """Wrap `embed` (-> tokens (B, L, D)) to return this rank's band (B, L/sp, D)."""

    def run(self, *args, **kwargs):
        tokens = embed(self, *args, **kwargs)
        sp, length = mesh.size(), tokens.shape[1]
        _check_tokens_divisible(length, sp)
        band = length // sp
        return tokens.narrow(1, mesh.get_local_rank() * band, band).contiguous()

    return run


def _gather_bands_first(forward_head, mesh: DeviceMesh):
    """Wrap `forward_head(tokens)` to take this rank's band (B, L/sp, D) and see all L tokens."""

    def run(self, band: torch.Tensor, *args, **kwargs):
        return forward_head(self, _GatherBands.apply(band, mesh), *args, **kwargs)

    return run


class _GatherBands(torch.autograd.Function):
    """band: (B, L/sp, D) -> tokens (B, L, D), bands in rank order. Backward: sp * this rank's band
    of the gradient, which is exact because every sp rank backpropagates the same output gradient
    (see the module docstring); it saves the reduce-scatter of the generic all-gather backward."""

    @staticmethod
    def forward(ctx, band: torch.Tensor, mesh: DeviceMesh) -> torch.Tensor:
        ctx.mesh, ctx.band = mesh, band.shape[1]
        return all_gather(band, 1, mesh)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        mesh = ctx.mesh
        return grad.narrow(1, mesh.get_local_rank() * ctx.band, ctx.band) * mesh.size(), None


def _with_ulysses(forward, mesh: DeviceMesh):
    """Wrap an attention module's `forward` so its SDPA call becomes Ulysses attention; the module's
    own code (projections, QK-norm, output projection) runs unchanged on the band."""

    def run(self, *args, **kwargs):
        with _UlyssesSDPA(mesh):
            return forward(self, *args, **kwargs)

    return run


class _UlyssesSDPA(TorchFunctionMode):
    """Within the block, `F.scaled_dot_product_attention` calls run `ulysses_attention`."""

    def __init__(self, mesh: DeviceMesh):
        super().__init__()
        self.mesh = mesh

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            return ulysses_attention(*args, mesh=self.mesh, **kwargs)
        return func(*args, **kwargs)


def ulysses_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, mesh: DeviceMesh,
                      **sdpa_kwargs) -> torch.Tensor:
    """Exact attention over the sp ranks' concatenated bands.

    q, k, v: (B, h, L/sp, d), this rank's band for all its h heads -> (B, h, L/sp, d).
    All-to-all #1 turns them into (B, h/sp, L, d) (all tokens, h/sp heads), SDPA runs on that,
    all-to-all #2 turns the result back. `sdpa_kwargs` (scale, dropout_p, is_causal) pass through;
    an `attn_mask` would need re-laying out and is refused.
    """
    if sdpa_kwargs.get("attn_mask") is not None:
        raise ValueError("ulysses_attention does not support attn_mask; pass none (ORBIT attends over all tokens)")
    sp = mesh.size()
    heads = q.shape[1]
    if heads % sp:
        raise ValueError(f"Ulysses attention needs the local head count {heads} divisible by sp={sp}")
    qkv = rearrange(torch.stack((q, k, v)), "t b (n h) s d -> (n t b h) s d", n=sp)
    qkv = rearrange(all_to_all_single(qkv, mesh), "(n t b h) s d -> t b h (n s) d", n=sp, t=3, b=q.shape[0])
    out = F.scaled_dot_product_attention(*qkv.unbind(0), **sdpa_kwargs)  # (B, h/sp, L, d)
    out = rearrange(out, "b h (n s) d -> (n b h) s d", n=sp)
    return rearrange(all_to_all_single(out, mesh), "(n b h) s d -> b (n h) s d", n=sp, b=q.shape[0])
