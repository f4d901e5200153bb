"""Backbones, pooling / BN necks, the re-ID models (global; global + parts) and importing pre-trained checkpoints."""

from .backbones import BACKBONES, ResNetBackbone, build_backbone
from .checkpoint_import import (
    ImportReport,
    load_init,
    load_state_dict_file,
    lup_uses_extra_bn,
    parse_init_spec,
)
from .necks import (
    POOLINGS,
    BNNeck,
    GeneralizedMeanPooling,
    GlobalAvgPooling,
    GlobalMaxPooling,
    HorizontalPartPooling,
    build_pooling,
)
from .part_model import PartReidModel, PartReidOutput, part_model_to_plain
from .reid_model import ReidModel, ReidOutput

__all__ = [
    "BACKBONES",
    "BNNeck",
    "GeneralizedMeanPooling",
    "GlobalAvgPooling",
    "GlobalMaxPooling",
    "HorizontalPartPooling",
    "ImportReport",
    "POOLINGS",
    "PartReidModel",
    "PartReidOutput",
    "ReidModel",
    "ReidOutput",
    "ResNetBackbone",
    "build_backbone",
    "build_pooling",
    "load_init",
    "load_state_dict_file",
    "lup_uses_extra_bn",
    "parse_init_spec",
    "part_model_to_plain",
]
