"""Start a model from a pretrained checkpoint: load what matches, re-initialize what the config
replaces, freeze what it freezes.

The pretrained checkpoint may come from any parallel layout: a distributed (DCP) checkpoint
directory is read whole in this process (`orbit.parallel.checkpoint.consolidate`, keys are the
plain model's names), or a single-file export (`torch.save` of a state dict). Loading happens on
the plain model, before the engine shards it, so every layout of the fine-tuning run starts from
the same weights. This reads the full pretrained model into host memory on every rank: fine up to
~10B parameters; larger models should fine-tune from a resharded DCP load instead.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from orbit.models.registry import family_of
from orbit.parallel.checkpoint import consolidate, is_complete
from orbit.train.logging import log


def read_pretrained(path: str | Path) -> dict[str, torch.Tensor]:
    """Model state dict of a DCP checkpoint directory or of a single-file export."""
    path = Path(path)
    if path.is_dir():
        if not is_complete(path):
            raise FileNotFoundError(f"finetune.init={str(path)!r} is not a complete checkpoint directory "
                                    f"(runs/<run>/checkpoints/step_<8 digits>)")
        return consolidate(path)
    if path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"finetune.init={str(path)!r} does not hold a state dict")
        return state
    raise FileNotFoundError(f"finetune.init={str(path)!r} does not exist (a checkpoint directory or an exported "
                            f"single file)")


def _under(name: str, prefixes: list[str] | tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def load_pretrained(model: nn.Module, path: str | Path, replace: list[str]) -> dict[str, list[str]]:
    """Copy every parameter/buffer of `model` found in the checkpoint, except names under `replace`.

    A name that is neither in the checkpoint with the same shape nor under `replace` is an error
    that lists them all, so a run never starts half-initialized by accident. Returns which names
    were loaded and which kept their fresh initialization.
    """
    pretrained = read_pretrained(path)
    own = model.state_dict()
    loaded, replaced, problems = [], [], []
    for name, tensor in own.items():
        if _under(name, replace):
            replaced.append(name)
        elif name not in pretrained:
            problems.append(f"{name} (not in the checkpoint)")
        elif pretrained[name].shape != tensor.shape:
            problems.append(f"{name} (shape {tuple(tensor.shape)} here, {tuple(pretrained[name].shape)} pretrained)")
        else:
            loaded.append(name)
    if problems:
        raise ValueError(f"cannot initialize from {str(path)!r}: {problems[:8]}{' ...' if len(problems) > 8 else ''} "
                         f"({len(problems)} names); add their modules to finetune.replace (now {replace}) to train "
                         f"them from scratch, or make the model match the pretrained one")
    model.load_state_dict({name: pretrained[name] for name in loaded}, strict=False)
    log.info("initialized %d tensors from %s; %d replaced (%s)", len(loaded), path, len(replaced),
             sorted({n.split(".")[0] for n in replaced}))
    return {"loaded": loaded, "replaced": replaced}


def freeze(model: nn.Module, policy: str) -> list[str]:
    """Turn off gradients by `policy` ("none", "backbone", "all_but_head"); returns the frozen names.

    The model's family names its parts (`register_family(..., backbone=..., head=...)`).
    """
    if policy == "none":
        return []
    family = family_of(model)
    parts = family.backbone if policy == "backbone" else family.head
    if policy in ("backbone", "all_but_head") and not parts:
        raise ValueError(f"finetune.freeze={policy!r} needs the {'backbone' if policy == 'backbone' else 'head'} "
                         f"modules of model family {family.name!r}, which registers none; use finetune.freeze=none")
    if policy == "backbone":
        frozen = lambda name: _under(name, family.backbone)  # noqa: E731
    elif policy == "all_but_head":
        frozen = lambda name: not _under(name, family.head)  # noqa: E731
    else:
        raise ValueError(f"finetune.freeze={policy!r} is not valid; use none, backbone or all_but_head")
    names = [name for name, param in model.named_parameters() if frozen(name)]
    for name, param in model.named_parameters():
        param.requires_grad_(name not in names)
    if len(names) == len(list(model.parameters())):
        raise ValueError(f"finetune.freeze={policy!r} freezes every parameter of {type(model).__name__}; "
                         f"nothing would train")
    return names


def prepare_model(model: nn.Module, finetune_cfg) -> nn.Module:
    """Apply a run's `finetune` section to a freshly built model (call at the end of `build_model`)."""
    if finetune_cfg.init:
        load_pretrained(model, finetune_cfg.init, finetune_cfg.replace)
    elif finetune_cfg.freeze != "none":
        raise ValueError(f"finetune.freeze={finetune_cfg.freeze!r} without finetune.init would freeze randomly "
                         f"initialized weights; pass --init <pretrained checkpoint> or set finetune.freeze=none")
    else:
        log.info("no finetune.init: training %s from scratch", type(model).__name__)
    frozen = freeze(model, finetune_cfg.freeze)
    if frozen:
        log.info("froze %d of %d parameter tensors (finetune.freeze=%s)", len(frozen),
                 len(list(model.parameters())), finetune_cfg.freeze)
    return model
