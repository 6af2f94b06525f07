"""Named model presets: `@register_model(name)` on a function returning `OrbitConfig` keyword arguments.

Presets are keyword dicts rather than finished configs so that overrides compose with defaults:
overriding `variables` also moves the default `out_variables`, overriding `num_heads` moves
`agg_heads`, unless those are given too.
"""
from __future__ import annotations

from typing import Any, Callable

from .config import OrbitConfig
from .orbit_vit import OrbitViT

_PRESETS: dict[str, Callable[[], dict[str, Any]]] = {}


def register_model(name: str):
    """Decorator: register a zero-argument factory of `OrbitConfig` keyword arguments under `name`."""

    def wrap(factory: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
        if name in _PRESETS:
            raise ValueError(f"model preset {name!r} is already registered")
        _PRESETS[name] = factory
        return factory

    return wrap


def list_models() -> list[str]:
    return sorted(_PRESETS)


def get_config(name: str, **overrides: Any) -> OrbitConfig:
    """The preset's config with `overrides` (any `OrbitConfig` field) applied and validated."""
    if name not in _PRESETS:
        raise ValueError(f"unknown model preset {name!r}; valid names: {list_models()}")
    valid = OrbitConfig.field_names()
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(f"unknown OrbitConfig override(s) {unknown}; valid fields: {list(valid)}")
    return OrbitConfig(**{"name": name, **_PRESETS[name](), **overrides})


def create_model(name: str, **overrides: Any) -> OrbitViT:
    """Build the named preset, e.g. `create_model("tiny", embed_dim=64)`."""
    return OrbitViT(get_config(name, **overrides))
