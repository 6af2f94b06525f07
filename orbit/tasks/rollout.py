"""Iterative (autoregressive) forecasts: step a one-step forecaster forward, feeding it its own output.

Direct prediction asks the model for the state at lead L in one pass (the lead-time embedding says
how far); a rollout reaches L by L / step passes of a short-lead forecast instead, as operational
ML models (GraphCast, Aurora, Pangu) do. The known forcings (solar zenith angle) are recomputed at
every step from the advancing valid time, because the forecaster builds its inputs from the batch's
`time` and `lead_hours`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import torch

from orbit.data.batch import Batch
from orbit.data.forcings import lead_valid_time_ns


def rollout(predict: Callable[[Batch], torch.Tensor], batch: Batch, step_hours: float,
            steps: int) -> Iterator[tuple[float, torch.Tensor]]:
    """Yield `(lead_hours, forecast)` after each of `steps` steps of `step_hours`.

    predict: normalized batch -> normalized forecast (B, V, H, W) of `batch.x`'s channels at
    `batch.time + batch.lead_hours`; batch: its `x` (B, V, H, W) is the initial state at `time`
    (its `y` and `lead_hours` are ignored). forecast: (B, V, H, W) normalized, valid at
    init + lead_hours. Step k's forecast is the input of step k + 1.
    """
    if steps < 1 or step_hours <= 0:
        raise ValueError(f"rollout needs steps >= 1 and step_hours > 0, got steps={steps}, step_hours={step_hours}")
    lead = torch.full_like(batch.lead_hours, float(step_hours))
    state = dataclasses.replace(batch, lead_hours=lead)
    for k in range(1, steps + 1):
        forecast = predict(state)
        yield k * float(step_hours), forecast
        state = dataclasses.replace(state, x=forecast.to(state.x.dtype),
                                    time=lead_valid_time_ns(state.time, lead))
