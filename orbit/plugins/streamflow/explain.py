r"""Explanations of a streamflow model's forecast of lead day `lead` (normalised flow), per input:

- integrated gradients (Sundararajan et al. 2017) with captum:
  ``IG_i(x) = (x_i - x0_i) int_0^1 dF(x0 + a (x - x0)) / dx_i da`` (Gauss-Legendre, `steps` points),
  baseline x0 = 0 in normalised units (every driver and attribute at its training mean, no past flow
  anomaly). Completeness: ``sum_i IG_i = F(x) - F(x0)``; the gap between the two is reported
  (captum's convergence delta) as a check of the integration.
- SHAP values by expected gradients (`shap.GradientExplainer`; Lundberg & Lee 2017, Erion et al. 2021)
  against a background of training samples.
- attention read off the models that have it: IMV-LSTM's variable attention beta (importance of each
  variable) and temporal attention alpha (per variable and day), TST's cross-attention of each lead
  over the past days.
Attributions come per input tensor: x_past (B, T, D), x_future (B, H, D), q_past (B, T, 1), static (B, S).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

INPUTS = ("x_past", "x_future", "q_past", "static")


class LeadForecast(nn.Module):
    """model(*inputs)[:, lead]: the scalar per sample that the explainers attribute (shap needs (B, 1)).
    Every input is tied into the graph with weight 0, so an input the model ignores (static attributes
    of the plain LSTM) gets attribution 0 instead of an autograd error."""

    def __init__(self, model: nn.Module, lead: int, keepdim: bool = False):
        super().__init__()
        self.model, self.lead, self.keepdim = model, lead, keepdim

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        out = self.model(*inputs)[:, self.lead] + sum(0.0 * x.flatten(1).sum(1) for x in inputs)
        return out[:, None] if self.keepdim else out


@dataclass
class Attribution:
    """Per input name, attributions shaped like the input (numpy); `gap`: |sum IG - (F(x) - F(x0))| per
    sample (integrated gradients only), `delta`: F(x) - F(x0) per sample."""

    values: dict[str, np.ndarray]
    gap: np.ndarray | None = None
    delta: np.ndarray | None = None


def integrated_gradients(model: nn.Module, inputs: tuple[torch.Tensor, ...], lead: int = 0, steps: int = 64,
                         internal_batch_size: int = 256) -> Attribution:
    from captum.attr import IntegratedGradients

    forecast = LeadForecast(model, lead).eval()
    baselines = tuple(torch.zeros_like(x) for x in inputs)
    attrs, gap = IntegratedGradients(forecast).attribute(
        tuple(x.detach().requires_grad_() for x in inputs), baselines=baselines, n_steps=steps,
        method="gausslegendre", internal_batch_size=internal_batch_size, return_convergence_delta=True)
    with torch.no_grad():
        delta = forecast(*inputs) - forecast(*baselines)
    return Attribution({n: a.detach().numpy() for n, a in zip(INPUTS, attrs)}, gap.abs().detach().numpy(),
                       delta.numpy())


def shap_values(model: nn.Module, inputs: tuple[torch.Tensor, ...], background: tuple[torch.Tensor, ...],
                lead: int = 0, samples: int = 100, seed: int = 0) -> Attribution:
    import shap

    explainer = shap.GradientExplainer(LeadForecast(model, lead, keepdim=True).eval(), list(background))
    values = explainer.shap_values(list(inputs), nsamples=samples, rseed=seed)
    return Attribution({n: np.asarray(v).reshape(x.shape) for n, v, x in zip(INPUTS, values, inputs)})


def attention(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> dict[str, np.ndarray]:
    """The model's attention, averaged over samples: IMV-LSTM {"beta" (N,), "alpha" (N, L)}, TST
    {"cross" (H, T)}; {} for models without attention."""
    forward = getattr(model, "forward_with_attention", None)
    if forward is None:
        return {}
    with torch.no_grad():
        out = forward(*inputs)
    if len(out) == 3:
        return {"beta": out[2].mean(0).numpy(), "alpha": out[1].mean(0).numpy()}
    return {"cross": out[1].mean(0).numpy()}


def driver_importance(attr: Attribution, driver_names: list[str]) -> dict[str, float]:
    """Mean |attribution| per sample of each driver (past and forecast days summed), of past flow
    ("q_past") and of the static attributes together ("static")."""
    v = attr.values
    per_driver = np.abs(v["x_past"]).sum(1) + np.abs(v["x_future"]).sum(1)  # (B, D)
    out = {name: float(per_driver[:, i].mean()) for i, name in enumerate(driver_names)}
    out["q_past"] = float(np.abs(v["q_past"]).sum((1, 2)).mean())
    out["static"] = float(np.abs(v["static"]).sum(1).mean())
    return out


def lag_driver_map(attr: Attribution) -> np.ndarray:
    """(T + H, D) mean |attribution| per day (oldest past day first, forecast days last) and driver."""
    return np.concatenate([np.abs(attr.values["x_past"]).mean(0), np.abs(attr.values["x_future"]).mean(0)])
