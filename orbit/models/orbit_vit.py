"""The ORBIT vision transformer (architecture only: no meshes, process groups or data)."""
from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from .config import OrbitConfig
from .layers import Block, LeadTimeEmbedding, VariableAggregation, VariablePatchEmbed, patchify, sincos_pos_embed_2d
from .layers.init import init_linear_and_norm


class OrbitViT(nn.Module):
    """Multi-variable ViT: per-variable patch tokens -> aggregation over variables -> blocks -> head.

    Three separable parts, so the pipeline engine can cut stages at block boundaries:
      `embed(x, var_ids, lead_hours, var_mask)` -> tokens (B, L, D)   (tokenizer, aggregation, embeddings)
      `self.blocks`: nn.ModuleList of identical `Block`s, tokens (B, L, D) -> (B, L, D)
      `forward_head(tokens)` -> (B, V_out, H, W)                       (final norm, linear, unpatchify)

    Its fine-tuning parts (backbone `blocks`, head `norm` + `head`) are registered with the family
    (orbit/models/families.py).
    """

    def __init__(self, config: OrbitConfig):
        super().__init__()
        self.config = config
        D = config.embed_dim
        self.patch_embed = VariablePatchEmbed(len(config.variables), config.patch_size, D)
        self.var_embed = nn.Embedding(len(config.variables), D)
        self.aggregation = VariableAggregation(D, config.agg_heads)
        self.register_buffer("pos_embed", torch.empty(config.num_tokens, D), persistent=False)
        self.lead_embed = LeadTimeEmbedding(D, config.lead_time_scale, config.lead_time_freq_dim)
        self.blocks = nn.ModuleList(
            Block(D, config.num_heads, config.mlp_ratio, config.qk_norm, config.drop_path)
            for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(D)
        self.head = nn.Linear(D, len(config.out_variables) * config.patch_size**2)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """(Re)initialize every parameter and the fixed position buffer.

        Call after `to_empty()` when the model was built on the meta device: the position
        buffer is not saved in checkpoints (it is a fixed function of the grid).
        """
        self.pos_embed.copy_(sincos_pos_embed_2d(self.config.grid_size, self.config.embed_dim))
        init_linear_and_norm(self)
        self.patch_embed.reset_parameters()
        nn.init.trunc_normal_(self.var_embed.weight, std=0.02)
        nn.init.trunc_normal_(self.aggregation.query, std=0.02)

    def _check_inputs(self, x, var_ids, lead_hours, var_mask) -> None:
        cfg = self.config
        if x.dim() != 4 or tuple(x.shape[-2:]) != cfg.img_size:
            raise ValueError(f"x must be (B, V_in, H, W) with (H, W) = {cfg.img_size}, got shape {tuple(x.shape)}")
        if var_ids.dim() != 1 or var_ids.numel() != x.shape[1]:
            raise ValueError(
                f"var_ids must be (V_in,) = ({x.shape[1]},) indices into the {len(cfg.variables)}-name "
                f"vocabulary, got shape {tuple(var_ids.shape)}"
            )
        if lead_hours.shape != (x.shape[0],):
            raise ValueError(f"lead_hours must be (B,) = ({x.shape[0]},), got shape {tuple(lead_hours.shape)}")
        if var_mask is not None and var_mask.shape != x.shape[:2]:
            raise ValueError(f"var_mask must be (B, V_in) = {tuple(x.shape[:2])}, got shape {tuple(var_mask.shape)}")

    def embed(self, x: torch.Tensor, var_ids: torch.Tensor | None, lead_hours: torch.Tensor,
              var_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, V_in, H, W), var_ids: (V_in,), lead_hours: (B,), var_mask: (B, V_in) -> (B, L, D).

        `config.fused_frontend` picks the folded aggregation (same parameters, same function).
        """
        if var_ids is None:  # x holds the whole vocabulary, in order
            var_ids = torch.arange(len(self.config.variables))
        self._check_inputs(x, var_ids, lead_hours, var_mask)
        var_ids = var_ids.to(self.var_embed.weight.device)
        if var_mask is not None:  # zero absent channels so even NaN fill values cannot leak through 0 * x
            x = x.masked_fill(~var_mask[:, :, None, None], 0.0)
        if self.config.fused_frontend:
            patch_weight, patch_bias = self.patch_embed.select(var_ids)  # (V, D, k), (V, D)
            token_bias = patch_bias + self.var_embed(var_ids)
            patches = patchify(x, self.config.patch_size)
            tokens = self.aggregation.forward_fused(patches, patch_weight, token_bias, var_mask)
        else:
            per_var = self.patch_embed(x, var_ids) + self.var_embed(var_ids)[:, None, :]  # (B, V, L, D)
            tokens = self.aggregation(per_var, var_mask)
        return tokens + self.pos_embed + self.lead_embed(lead_hours)[:, None, :]

    def forward_features(self, x: torch.Tensor, var_ids: torch.Tensor, lead_hours: torch.Tensor,
                         var_mask: torch.Tensor | None = None) -> torch.Tensor:
        """-> tokens (B, L, D) after the last block (before the final norm)."""
        tokens = self.embed(x, var_ids, lead_hours, var_mask)
        for block in self.blocks:
            tokens = block(tokens)
        return tokens

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (B, L, D) -> fields (B, V_out, H, W)."""
        patches = self.head(self.norm(tokens))
        grid_h, grid_w = self.config.grid_size
        p = self.config.patch_size
        return rearrange(patches, "b (h w) (v p1 p2) -> b v (h p1) (w p2)", h=grid_h, w=grid_w, p1=p, p2=p)

    def forward(self, x: torch.Tensor, var_ids: torch.Tensor, lead_hours: torch.Tensor,
                var_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, V_in, H, W) channels in `var_ids` order (any subset/order of the vocabulary);
        var_mask False marks a channel absent for that sample (its values have no influence);
        lead_hours: (B,) -> prediction (B, V_out, H, W) of `config.out_variables`."""
        return self.forward_head(self.forward_features(x, var_ids, lead_hours, var_mask))
