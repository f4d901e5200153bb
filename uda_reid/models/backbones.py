"""Backbones: images ``N×3×H×W`` -> feature maps ``N×C×h×w`` (and, for transformers, a class token).

Backbones are registered by name in :data:`BACKBONES` (the ``--arch`` option), each family in its own
module: the ResNets here, ResNet-50-IBN-a in ``resnet_ibn.py``, the Vision Transformers in ``vit.py``.
Every backbone has ``out_channels`` and ``features(images) -> (map, class token or None)``; a
transformer's factory carries ``class_token = True``. The ResNets keep the
torchvision parameter names (``conv1.weight``, ``layer1.0.conv1.weight`` ...) without ``avgpool``/``fc``,
so ImageNet, LUPerson and UP-ReID state dicts map onto them key for key. They are always built with
random weights: pre-trained weights come from a local file through :mod:`checkpoint_import`, never
from a download.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

from ..errors import ConfigError
from ..registry import Registry

BACKBONES: Registry[Callable[..., nn.Module]] = Registry("backbone", "--arch")


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without its pooling and classifier.

    Re-ID models use ``last_stride=1``: the first block of ``layer4`` does not downsample, which doubles
    the final map (16×8 instead of 8×4 for a 256×128 image) and keeps spatial detail for pooling and
    for part stripes. The parameters are unchanged, so checkpoints load whatever the stride.
    """

    def __init__(self, resnet: tv_resnet.ResNet, *, last_stride: int = 1) -> None:
        super().__init__()
        self.conv1 = resnet.conv1
        self.bn1 = resnet.bn1
        self.relu = resnet.relu
        self.maxpool = resnet.maxpool
        self.layer1 = resnet.layer1
        self.layer2 = resnet.layer2
        self.layer3 = resnet.layer3
        self.layer4 = resnet.layer4
        self.out_channels: int = resnet.fc.in_features
        self.last_stride = last_stride
        # Torchvision puts layer4's stride on conv1 (BasicBlock) or conv2 (Bottleneck, "v1.5") and on the
        # downsample conv: every strided conv of the first block gets the requested stride.
        for module in self.layer4[0].modules():
            if isinstance(module, nn.Conv2d) and module.stride != (1, 1):
                module.stride = (last_stride, last_stride)

    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        """(the map, no class token): the backbone interface transformers share."""
        return self(images), None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``N×3×H×W`` -> ``N×C×H/16×W/16`` (last stride 1) or ``N×C×H/32×W/32`` (last stride 2)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)


@BACKBONES.register("resnet18")
def resnet18(*, last_stride: int = 1) -> ResNetBackbone:
    """ResNet-18 (512 channels): fast enough for CPU smoke runs and tests."""
    return ResNetBackbone(tv_resnet.resnet18(weights=None), last_stride=last_stride)


@BACKBONES.register("resnet34")
def resnet34(*, last_stride: int = 1) -> ResNetBackbone:
    """ResNet-34 (512 channels)."""
    return ResNetBackbone(tv_resnet.resnet34(weights=None), last_stride=last_stride)


@BACKBONES.register("resnet50")
def resnet50(*, last_stride: int = 1) -> ResNetBackbone:
    """ResNet-50 (2048 channels): the backbone of every published SpCL / GDS / PPLR / LUPerson number."""
    return ResNetBackbone(tv_resnet.resnet50(weights=None), last_stride=last_stride)


@BACKBONES.register("resnet101")
def resnet101(*, last_stride: int = 1) -> ResNetBackbone:
    """ResNet-101 (2048 channels), e.g. for ``lup_moco_r101.pth``."""
    return ResNetBackbone(tv_resnet.resnet101(weights=None), last_stride=last_stride)


def is_transformer(name: str) -> bool:
    """Whether the backbone ``name``'s global feature is a class token (a transformer) rather than a
    pooled map; False for a name that is not registered (its own rule names it)."""
    return name in BACKBONES and bool(getattr(BACKBONES.get(name), "class_token", False))


def build_backbone(name: str, *, last_stride: int = 1, image_size: tuple[int, int] = (256, 128),
                   drop_path: float = 0.0) -> nn.Module:
    """Build a randomly initialised backbone by registry name (``--arch``).

    The result maps ``N×3×H×W`` to ``N×C×h×w``, has ``out_channels == C`` and ``features()``
    gives (map, class token or None). ``last_stride`` is for convolutional backbones, ``image_size``
    (the grid of the position embeddings) and ``drop_path`` for transformers.
    """
    if last_stride not in (1, 2):
        raise ConfigError(f"last_stride must be 1 or 2 (got {last_stride!r})")
    factory = BACKBONES.get(name)
    if getattr(factory, "class_token", False):
        return factory(image_size=tuple(image_size), drop_path=drop_path)
    return factory(last_stride=last_stride)


# The other families register their backbones where they are defined.
from . import resnet_ibn, vit  # noqa: E402, F401
