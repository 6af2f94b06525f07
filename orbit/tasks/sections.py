"""The config sections of the ORBIT tasks (pretrain, forecast, downscale, elm_spinup): the ViT preset
(`model:`), the weather stores and their year split (`data:`) and the held-out scoring (`eval:`).
Registered with each task (orbit/registry.py); other tasks and plug-ins type their own."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from orbit.config import DataConfig, EvalConfig

ALL_CHANNELS = (
    "t2m", "u10", "v10", "tp",
    "z500", "z850", "t500", "t850", "u500", "u850", "v500", "v850", "q500", "q850",
)


@dataclass
class OrbitModelConfig:
    """Which ViT preset to build and which of its hyper-parameters to override (None = preset value).
    `residual`: the model predicts the normalized change from the input instead of the state."""

    preset: str = "tiny"
    patch_size: int | None = None
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    mlp_ratio: float | None = None
    qk_norm: bool | None = None
    fused_frontend: bool | None = None
    drop_path: float | None = None
    residual: bool = True

    def overrides(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("preset", "residual") and getattr(self, f.name) is not None}


def _check_years(name: str, years: list[int]) -> None:
    if len(years) != 2 or years[0] > years[1]:
        raise ValueError(f"{name}={years} must be [first_year, last_year] with first <= last")


def check_disjoint_years(periods: dict[str, list[int] | None]) -> None:
    """Train, validation and test periods ([first, last] years; None = unused) must not overlap."""
    named = [(name, set(year_range(years))) for name, years in periods.items() if years]
    for i, (name, years) in enumerate(named):
        for other, other_years in named[i + 1:]:
            if years & other_years:
                raise ValueError(f"{name} {periods[name]} overlaps {other} {periods[other]} (years "
                                 f"{sorted(years & other_years)}); train, validation and test years must be apart")


def year_range(years: list[int]) -> range:
    """[first, last] inclusive, as the config writes it."""
    return range(years[0], years[1] + 1)


@dataclass
class WeatherDataConfig(DataConfig):
    """Where the stores are, which channels and leads to train on, and how years are split."""

    root: str = "data/toy"
    sources: list[str] = field(default_factory=lambda: ["cmip_a", "cmip_b", "cmip_c"])
    channels: list[str] = field(default_factory=lambda: list(ALL_CHANNELS))
    leads_hours: list[int] = field(default_factory=lambda: [6, 12, 24, 48, 72])
    train_years: list[int] = field(default_factory=lambda: [1990, 1994])
    in_memory: bool = True
    solar_forcing: bool = True

    def validate(self) -> None:
        unknown = sorted(set(self.channels) - set(ALL_CHANNELS))
        if unknown:
            raise ValueError(f"data.channels has unknown channels {unknown}; valid: {list(ALL_CHANNELS)}")
        _check_years("data.train_years", self.train_years)
        if not self.leads_hours or min(self.leads_hours) <= 0:
            raise ValueError(f"lead times must be positive hours; got data.leads_hours={self.leads_hours}")


@dataclass
class WeatherEvalConfig(EvalConfig):
    """Held-out evaluation: years, leads and how many initial times to score per source
    (`max_samples`, evenly spread over the years: every season, every hour)."""

    years: list[int] = field(default_factory=lambda: [1996, 1996])
    validation_years: list[int] | None = None  # where steps, learning rate etc. are chosen
    leads_hours: list[int] = field(default_factory=lambda: [6, 24, 72])
    max_samples: int = 64

    def validate(self) -> None:
        _check_years("eval.years", self.years)
        if self.validation_years is not None:
            _check_years("eval.validation_years", self.validation_years)
        if self.max_samples < 1:
            raise ValueError(f"eval.max_samples={self.max_samples} must be >= 1")
        if min(self.leads_hours, default=0) <= 0:
            raise ValueError(f"lead times must be positive hours; got eval.leads_hours={self.leads_hours}")


# The keyword arguments of `register_task` for a task on the weather stores with a ViT preset.
WEATHER_SECTIONS = {"model": OrbitModelConfig, "data": WeatherDataConfig, "eval": WeatherEvalConfig}
