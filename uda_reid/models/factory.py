"""Build a ``ReidModel`` from a run's model settings, or back from a saved run checkpoint."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import torch

from ..config import ModelConfig, RunConfig, config_from_dict
from ..errors import CheckpointError
from ..fileio import safe_torch_load
from .backbones import is_transformer
from .checkpoint_import import (
    PRETRAIN_STAGE,
    ImportReport,
    load_init,
    lup_uses_extra_bn,
)
from .checkpoints import is_run_checkpoint, load_checkpoint
from .necks import TOKEN_POOLING
from .normalization import run_config_beside, with_resolved_normalization
from .reid_model import ReidModel


def resolve_extra_bn(config: ModelConfig) -> bool:
    """``extra_bn: null`` means on exactly for LUPerson / UP-ReID initial weights of a convolutional
    backbone (a transformer's feature is its class token: nothing to re-calibrate)."""
    if config.extra_bn is not None:
        return config.extra_bn
    return config.init is not None and lup_uses_extra_bn(config.init) and not is_transformer(config.arch)


def fitted_model_config(config: ModelConfig, **changes) -> ModelConfig:
    """``config`` with ``changes``, its pooling and extra BN fitted to the backbone family: a
    transformer's global feature is its class token and it has no map to re-calibrate. For models
    built from a bare backbone file (``extract --weights lup:FILE --arch ...``, a pre-training's
    backbone); a run's own model settings are checked, never fitted."""
    config = dataclasses.replace(config, **changes)
    if is_transformer(config.arch):
        return dataclasses.replace(config, pooling=TOKEN_POOLING, extra_bn=None)  # None: off for a transformer
    if config.pooling == TOKEN_POOLING:
        return dataclasses.replace(config, pooling=ModelConfig().pooling)
    return config


def build_model(config: ModelConfig, num_classes: int = 0, *, compute_dtype: torch.dtype | None = None,
                image_size: tuple[int, int] = (256, 128)) -> tuple[ReidModel, ImportReport | None]:
    """The model of ``config`` with its initial weights loaded (report is None without ``init``);
    ``compute_dtype``: the backbone's autocast dtype (the run's precision; None: float32);
    ``image_size``: the run's ``(data.height, data.width)`` (a transformer's position embeddings)."""
    model = ReidModel(
        config.arch,
        num_classes=num_classes,
        pooling=config.pooling,
        last_stride=config.last_stride,
        neck=config.neck,
        extra_bn=resolve_extra_bn(config),
        compute_dtype=compute_dtype,
        image_size=image_size,
        drop_path=config.drop_path,
    )
    report = load_init(model, config.init) if config.init else None
    return model, report


def model_from_weights(weights: str, arch: str = "resnet50", *, compute_dtype: torch.dtype | None = None,
                       adjust: Callable[[RunConfig], RunConfig] | None = None,
                       say: Callable[[str], None] | None = None) -> tuple[ReidModel, RunConfig]:
    """The model to evaluate and the config it was trained with.

    ``weights`` is a uda_reid run checkpoint (architecture and image settings come from its saved
    config), or an init spec (``imagenet:PATH``, ``lup:PATH``, ``upreid:PATH``, or a plain state
    dict) loaded into ``arch`` with the library defaults, the pooling fitted to the family and
    ``data.normalization: auto`` resolved from the weights (told to ``say``). ``adjust`` (a recipe,
    ``--set``) changes the returned config, and for foreign weights the model settings too.
    """
    adjust = adjust or (lambda config: config)
    if Path(weights).is_file() and is_run_checkpoint(safe_torch_load(weights)):
        payload = load_checkpoint(weights)
        saved, _ = with_resolved_normalization(config_from_dict(payload["config"]))  # written resolved by a run
        config = adjust(saved)
        config = dataclasses.replace(config, model=saved.model)  # the trained weights fix the model
        if payload.get("stage") == PRETRAIN_STAGE:  # a pre-training run: its backbone, as --init moco: reads it
            model_config = fitted_model_config(config.model, init=f"moco:{weights}", extra_bn=True)
            model, _ = build_model(model_config, compute_dtype=compute_dtype, image_size=_image_size(config))
            return model, config
        # The checkpoint's own weights replace the initialisation; keep the architecture it implied.
        model_config = dataclasses.replace(config.model, init=None, extra_bn=resolve_extra_bn(config.model))
        model, _ = build_model(model_config, num_classes=int(payload.get("num_classes", 0)), compute_dtype=compute_dtype,
                               image_size=_image_size(config))
        try:
            model.load_state_dict(payload["model"])
        except RuntimeError as error:
            raise CheckpointError(f"{weights}: saved weights do not fit its saved model settings: {error}") from None
        return model, config
    base = RunConfig()
    beside = run_config_beside(weights)
    if beside is not None:  # the image size the weights were trained at, unless --recipe / --set says otherwise
        saved, path = beside
        height, width = saved["data"].get("height"), saved["data"].get("width")
        if isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0:
            base = dataclasses.replace(base, data=dataclasses.replace(base.data, height=height, width=width))
    config = adjust(dataclasses.replace(base, model=fitted_model_config(base.model, arch=arch, init=weights)))
    if beside is not None and say is not None and _image_size(config) == _image_size(base) != _image_size(RunConfig()):
        say(f"note: images at {base.data.height}x{base.data.width}, the size of the run in {beside[1]}; "
            f"--set data.height=H --set data.width=W (or --recipe) to choose")
    config, note = with_resolved_normalization(  # --set may name another pooling: the arch and file stay
        dataclasses.replace(config, model=dataclasses.replace(config.model, arch=arch, init=weights)))
    if note is not None and say is not None:
        say(f"note: {note}")
    model, _ = build_model(config.model, compute_dtype=compute_dtype, image_size=_image_size(config))
    return model, config


def _image_size(config: RunConfig) -> tuple[int, int]:
    return config.data.height, config.data.width
