"""Typed run configuration: nested dataclasses loaded from YAML, with dotted command-line overrides.

A misspelled key is the commonest way a cluster job wastes its allocation, so every unknown key
is an error that names the key and lists the valid ones, and every value is type-checked before
any work starts.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orbit.registry import get_task

class ConfigError(ValueError):
    """A configuration value or key is invalid; the message says which and what is valid."""


@dataclass
class DataConfig:
    """What every task's `data:` section has; a task's own data schema subclasses it."""

    batch_size: int = 8  # per data-parallel rank
    num_workers: int = 0


@dataclass
class EvalConfig:
    """What every task's `eval:` section has; a task's own eval schema subclasses it."""

    batch_size: int = 16


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping of the one training loop."""

    max_steps: int = 300
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_steps: int = 30
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 1.0
    grad_accum_steps: int = 1
    precision: str = "fp32"
    activation_checkpointing: bool = False
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0
    ckpt_every: int = 100
    keep_last: int = 2
    async_checkpoint: bool = False
    nonfinite: str = "stop"
    max_skipped_steps: int = 10
    peak_tflops: float = 0.0  # the device's stated peak for MFU (e.g. 191.5 for an MI250X GCD in bf16); 0: none
    select_best: str | None = None  # evaluation scalar to select on ("{phase}": the phase's name); None: last state
    select_mode: str = "min"  # min or max of select_best


@dataclass
class ParallelConfig:
    """Hybrid-STOP degrees (one may be -1 = the rest of the world) and how each axis runs."""

    dp_replicate: int = 1
    dp_shard: int = -1
    sp: int = 1
    tp: int = 1
    pp: int = 1
    pp_schedule: str = "1f1b"
    pp_microbatches: int = 0
    pp_stages_per_rank: int = 1
    engine: str = "fsdp"
    zero_stage: int = 2
    compile: bool = False
    timeout_s: float = 600.0
    heartbeat_timeout_s: float = 120.0


@dataclass
class FinetuneConfig:
    """Start from a pretrained checkpoint (any layout): what is loaded, replaced and frozen."""

    init: str | None = None
    freeze: str = "none"
    replace: list[str] = field(default_factory=list)
    data_fraction: float = 1.0


@dataclass
class RunConfig:
    """Everything a run needs; written resolved to `<run_dir>/config.yaml`.

    `train`, `parallel` and `finetune` are the same for every task; `model`, `data`, `eval` and
    `options` are typed by the dataclasses the task registered (orbit/registry.py)."""

    name: str = "orbit"
    task: str = "pretrain"
    model: Any = None
    data: Any = None
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: Any = None
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    options: Any = None

    def __post_init__(self) -> None:
        entry = _task_entry(self.task)
        for section in TASK_SECTIONS:
            setattr(self, section, _task_section(entry, section, getattr(self, section)))
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """Short stable hash of the resolved config, recorded in logs and the run directory."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


TASK_SECTIONS = ("model", "data", "eval", "options")
# Sections every run has, typed by these base classes when the task registers no schema of its own.
SECTION_DEFAULTS = {"data": DataConfig, "eval": EvalConfig}


def _task_entry(task: str):
    try:
        return get_task(task)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _task_section(entry, section: str, values: Any) -> Any:
    """A `model:` / `data:` / `eval:` / `options:` section typed by the dataclass its task registered;
    a section the task does not have must be absent."""
    schema = entry.schema(section) or SECTION_DEFAULTS.get(section)
    if dataclasses.is_dataclass(values) and not isinstance(values, type):
        return values
    if schema is None:
        if values:
            raise ConfigError(f"task {entry.name!r} takes no {section} section, got {values!r}")
        return None
    for base in (SECTION_DEFAULTS.get(section),):
        if base is not None and not issubclass(schema, base):
            raise TypeError(f"task {entry.name!r}: its {section} schema {schema.__name__} must subclass "
                            f"orbit.config.{base.__name__}")
    section_cfg = _coerce(values or {}, schema, section)
    check = getattr(section_cfg, "validate", None)
    if callable(check):
        try:
            check()
        except ValueError as error:
            raise ConfigError(f"{section}: {error}") from None
    return section_cfg


PRECISIONS = ("fp32", "bf16")
NONFINITE_POLICIES = ("stop", "skip")
FREEZE_POLICIES = ("none", "backbone", "all_but_head")
PP_SCHEDULES = ("gpipe", "1f1b", "interleaved_1f1b")
ENGINES = ("fsdp", "deepspeed")


def validate(cfg: RunConfig) -> None:
    """Value checks of the generic sections that a type check cannot express (a task's own sections
    check themselves in their `validate()`)."""
    t, d, e = cfg.train, cfg.data, cfg.eval
    if t.precision not in PRECISIONS:
        raise ConfigError(f"train.precision={t.precision!r} is not valid; use one of {list(PRECISIONS)}")
    positive = {"train.max_steps": t.max_steps, "data.batch_size": d.batch_size,
                "train.grad_accum_steps": t.grad_accum_steps, "eval.batch_size": e.batch_size,
                "train.log_every": t.log_every, "train.keep_last": t.keep_last}
    for name, value in positive.items():
        if value < 1:
            raise ConfigError(f"{name}={value} must be >= 1")
    if t.peak_tflops < 0:
        raise ConfigError(f"train.peak_tflops={t.peak_tflops} must be >= 0 (0: MFU not reported)")
    if t.nonfinite not in NONFINITE_POLICIES:
        raise ConfigError(f"train.nonfinite={t.nonfinite!r} is not valid; use one of {list(NONFINITE_POLICIES)}")
    if t.select_mode not in ("min", "max"):
        raise ConfigError(f"train.select_mode={t.select_mode!r} is not valid; use 'min' or 'max'")
    if t.select_best is not None:
        if t.eval_every < 1:
            raise ConfigError(f"train.select_best={t.select_best!r} needs train.eval_every >= 1 (how often to "
                              f"evaluate), got {t.eval_every}")
        try:
            t.select_best.format(phase="mean")
        except (KeyError, IndexError, ValueError):
            raise ConfigError(f"train.select_best={t.select_best!r}: only {{phase}} may appear in braces") from None
    if t.max_skipped_steps < 0:
        raise ConfigError(f"train.max_skipped_steps={t.max_skipped_steps} must be >= 0")
    f = cfg.finetune
    if f.freeze not in FREEZE_POLICIES:
        raise ConfigError(f"finetune.freeze={f.freeze!r} is not valid; use one of {list(FREEZE_POLICIES)}")
    if not 0.0 < f.data_fraction <= 1.0:
        raise ConfigError(f"finetune.data_fraction={f.data_fraction} must be in (0, 1]")
    p = cfg.parallel
    if p.timeout_s <= 0 or p.heartbeat_timeout_s <= 0:
        raise ConfigError(f"parallel.timeout_s={p.timeout_s} and parallel.heartbeat_timeout_s="
                          f"{p.heartbeat_timeout_s} must be positive seconds")
    if p.pp_schedule not in PP_SCHEDULES:
        raise ConfigError(f"parallel.pp_schedule={p.pp_schedule!r} is not valid; use one of {list(PP_SCHEDULES)}")
    if p.engine not in ENGINES:
        raise ConfigError(f"parallel.engine={p.engine!r} is not valid; use one of {list(ENGINES)}")
    if p.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"parallel.zero_stage={p.zero_stage} is not valid; use 0, 1, 2 or 3")


# --------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting where the YAML reading is the surprise, not the
    value: int -> float, a string in exponent form (PyYAML reads `1e-3` as a string: YAML 1.1) -> float, and
    a date (PyYAML reads `2000-01-01` as a date) -> its ISO string for str fields."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, key)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
        return float(value)
    if tp is str and isinstance(value, datetime.date):
        return value.isoformat()
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if tp in (float, str) and not isinstance(value, tp):
        raise ConfigError(f"{key} must be a {_type_name(tp)}, got {value!r}")
    return value


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in names:
            raise ConfigError(f"unknown config key {full!r}; valid keys here: {names}")
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
    node[leaf] = value


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["train.max_steps=50", "model.embed_dim=128"]` -> nested dict; values parsed as YAML."""
    tree: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw))
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML file (or start from defaults), apply dotted overrides, return a checked RunConfig."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        tree = yaml.safe_load(path.read_text()) or {}
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
    tree = _merge(tree, parse_overrides(overrides or []))
    return _build(RunConfig, tree)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
