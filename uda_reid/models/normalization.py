"""``data.normalization: auto``: the input statistics the initial weights were trained with.

Fine-tuning with other statistics than pre-training shifts every activation of the first layer, so
the default follows ``model.init``: random or ImageNet weights -> ``imagenet``; LUPerson's ResNets
(``lup:``, ``upreid:``, a raw MoCo checkpoint) -> ``lup``, the statistics LUPerson's fine-tuning uses;
TransReID-SSL's LUPerson ViTs -> ``lup_vit`` (mean = std = 0.5, their fine-tuning's); a uda_reid run
or ``udareid pretrain`` output -> the normalisation that run used. An explicit ``data.normalization``
always wins. The resolved name is what the run's ``config.yaml`` and checkpoints hold, so evaluation,
extraction and export of a trained model use it too.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from ..config import AUTO_NORMALIZATION, NORMALIZATIONS, RunConfig
from ..fileio import safe_torch_load
from .backbones import is_transformer
from .checkpoint_import import RUN_CHECKPOINT_FORMAT, parse_init_spec


def _run_normalization(config_data: object) -> str | None:
    """``data.normalization`` of a saved run config (a mapping), when it names statistics."""
    if isinstance(config_data, dict):
        name = (config_data.get("data") or {}).get("normalization")
        if isinstance(name, str) and name in NORMALIZATIONS:
            return name
    return None


def run_config_beside(init: str | None) -> tuple[dict, Path] | None:
    """The saved config of the uda_reid run whose folder holds the weights file of ``init`` (``udareid
    pretrain``'s backbone.pth sits beside its config.yaml), and that file; None when there is none."""
    if init is None:
        return None
    kind, path = parse_init_spec(init)
    if kind not in ("moco", "file") or path is None:
        return None
    beside = path.parent / "config.yaml"
    if not beside.is_file():
        return None
    try:
        content = yaml.safe_load(beside.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None  # not one of ours: nothing is taken from it
    return (content, beside) if isinstance(content, dict) and isinstance(content.get("data"), dict) else None


def weights_normalization(config: RunConfig) -> tuple[str, str]:
    """(normalisation name, why) for ``config.model``'s initial weights."""
    model = config.model
    if model.init is None:
        return "imagenet", "random initial weights"
    kind, path = parse_init_spec(model.init)
    if kind == "imagenet":
        return "imagenet", "ImageNet weights"
    if kind == "lup" and is_transformer(model.arch):
        return "lup_vit", "TransReID-SSL's LUPerson ViT (mean = std = 0.5, as their fine-tuning)"
    if kind in ("moco", "file") and path is not None:
        if path.is_file() and path.suffix != ".safetensors":
            content = safe_torch_load(path)
            if isinstance(content, dict) and content.get("format") == RUN_CHECKPOINT_FORMAT:
                name = _run_normalization(content.get("config"))
                if name is not None:
                    return name, f"the normalisation of the run that wrote {path.name}"
        beside = run_config_beside(model.init) if kind == "moco" else None
        if beside is not None:
            name = _run_normalization(beside[0])
            if name is not None:
                return name, f"the normalisation of the pre-training run in {path.parent}"
    if kind in ("lup", "upreid", "moco"):
        return "lup", "LUPerson's fine-tuning statistics for LUPerson-style self-supervised ResNet weights"
    return "imagenet", "a plain state dict (ImageNet's statistics, the usual)"


def with_resolved_normalization(config: RunConfig) -> tuple[RunConfig, str | None]:
    """``config`` with ``data.normalization: auto`` replaced by the weights' statistics, and the line
    that says so (None when the setting named statistics already)."""
    if config.data.normalization != AUTO_NORMALIZATION:
        return config, None
    name, why = weights_normalization(config)
    resolved = dataclasses.replace(config, data=dataclasses.replace(config.data, normalization=name))
    return resolved, f"data.normalization auto: {name} ({why}); --set data.normalization=NAME to choose"

