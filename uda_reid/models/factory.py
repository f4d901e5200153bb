"""Build a ``ReidModel`` from a run's model settings, or back from a saved run checkpoint."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..config import ModelConfig, RunConfig, config_from_dict
from ..errors import CheckpointError
from ..fileio import safe_torch_load
from .checkpoints import is_run_checkpoint, load_checkpoint
from .checkpoint_import import PRETRAIN_STAGE, ImportReport, load_init, lup_uses_extra_bn
from .reid_model import ReidModel


def resolve_extra_bn(config: ModelConfig) -> bool:
    """``extra_bn: null`` means on exactly for LUPerson / UP-ReID initial weights."""
    if config.extra_bn is not None:
        return config.extra_bn
    return config.init is not None and lup_uses_extra_bn(config.init)


def build_model(config: ModelConfig, num_classes: int = 0, *,
                compute_dtype: torch.dtype | None = None) -> tuple[ReidModel, ImportReport | None]:
    """The model of ``config`` with its initial weights loaded (report is None without ``init``);
    ``compute_dtype``: the backbone's autocast dtype (the run's precision; None: float32)."""
    model = ReidModel(
        config.arch,
        num_classes=num_classes,
        pooling=config.pooling,
        last_stride=config.last_stride,
        neck=config.neck,
        extra_bn=resolve_extra_bn(config),
        compute_dtype=compute_dtype,
    )
    report = load_init(model, config.init) if config.init else None
    return model, report


def model_from_weights(weights: str, arch: str = "resnet50", *,
                       compute_dtype: torch.dtype | None = None) -> tuple[ReidModel, RunConfig]:
    """The model to evaluate and the config it was trained with.

    ``weights`` is a uda_reid run checkpoint (architecture and image settings come from its saved
    config), or an init spec (``imagenet:PATH``, ``lup:PATH``, ``upreid:PATH``, or a plain state
    dict) loaded into ``arch`` with the default settings.
    """
    if Path(weights).is_file() and is_run_checkpoint(safe_torch_load(weights)):
        payload = load_checkpoint(weights)
        config = config_from_dict(payload["config"])
        if payload.get("stage") == PRETRAIN_STAGE:  # a pre-training run: its backbone, as --init moco: reads it
            model, _ = build_model(dataclasses.replace(config.model, init=f"moco:{weights}", extra_bn=True),
                                   compute_dtype=compute_dtype)
            return model, config
        # The checkpoint's own weights replace the initialisation; keep the architecture it implied.
        model_config = dataclasses.replace(config.model, init=None, extra_bn=resolve_extra_bn(config.model))
        model, _ = build_model(model_config, num_classes=int(payload.get("num_classes", 0)), compute_dtype=compute_dtype)
        try:
            model.load_state_dict(payload["model"])
        except RuntimeError as error:
            raise CheckpointError(f"{weights}: saved weights do not fit its saved model settings: {error}") from None
        return model, config
    config = RunConfig()
    config.model = dataclasses.replace(config.model, arch=arch, init=weights)
    model, _ = build_model(config.model, compute_dtype=compute_dtype)
    return model, config
