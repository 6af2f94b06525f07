"""Model families and the named presets of the ORBIT ViT.

A model family (`register_family`) is a model class with what the rest of the framework needs to know
about it: its parallel plan (`orbit.parallel.plans.ParallelPlan`: which of tp / sp / pp it supports
and how; None = data parallelism only). Whoever builds an engine looks the plan up here
(`family_of(model)`) and passes it in, so the engine imports no model.

Presets: `@register_model(name)` on a function returning `OrbitConfig` keyword arguments.

Presets are keyword dicts rather than finished configs so that overrides compose with defaults:
overriding `variables` also moves the default `out_variables`, overriding `num_heads` moves
`agg_heads`, unless those are given too.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

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


@dataclass(frozen=True)
class ModelFamily:
    """`example()` -> (a tiny model, a batch of its inputs): what the tests run over every family.
    `backbone` / `head`: module-name prefixes that fine-tuning freezes (`finetune.freeze: backbone`)
    or keeps training (`all_but_head`)."""

    name: str
    model_class: type[nn.Module]
    plan: Any = None  # a ParallelPlan, or None: data parallelism only
    example: Callable[[], tuple[nn.Module, tuple]] | None = None
    backbone: tuple[str, ...] = ()
    head: tuple[str, ...] = ()


_FAMILIES: dict[str, ModelFamily] = {}


def register_family(name: str, model_class: type[nn.Module], plan: Any = None,
                    example: Callable[[], tuple[nn.Module, tuple]] | None = None,
                    backbone: tuple[str, ...] = (), head: tuple[str, ...] = ()) -> ModelFamily:
    """Register `model_class` (and its subclasses) as the family `name` with its parallel plan, a
    tiny example (model, inputs) for the tests and its fine-tuning parts."""
    if name in _FAMILIES:
        raise ValueError(f"model family {name!r} is already registered (by {_FAMILIES[name].model_class.__name__})")
    family = ModelFamily(name, model_class, plan, example, tuple(backbone), tuple(head))
    _FAMILIES[name] = family
    return family


def list_families() -> list[str]:
    return sorted(_FAMILIES)


def get_family(name: str) -> ModelFamily:
    if name not in _FAMILIES:
        raise ValueError(f"unknown model family {name!r}; registered families: {list_families()}")
    return _FAMILIES[name]


def family_of(model: nn.Module) -> ModelFamily:
    """The family `model` belongs to (its class or the nearest registered base class)."""
    by_class = {family.model_class: family for family in _FAMILIES.values()}
    for cls in type(model).__mro__:
        if cls in by_class:
            return by_class[cls]
    raise ValueError(f"{type(model).__name__} belongs to no registered model family; register it with "
                     f"orbit.models.registry.register_family(name, {type(model).__name__}, plan) "
                     f"(registered: {list_families()})")
