"""ResNet-50-IBN-a, the IBN variant of the ResNet family (``--arch resnet50_ibn_a``)."""

from __future__ import annotations

from torchvision.models import resnet as tv_resnet

from .backbones import BACKBONES, ResNetBackbone
from .ibn import IBN


@BACKBONES.register("resnet50_ibn_a")
def resnet50_ibn_a(*, last_stride: int = 1) -> ResNetBackbone:
    """ResNet-50-IBN-a (Pan et al., ECCV 2018; 2048 channels): ResNet-50 whose first BatchNorm of every
    block in the first three stages is IBN (:mod:`.ibn`: InstanceNorm on half the channels), the layout
    and key names of IBN-Net's released ``resnet50_ibn_a-d9d0bb7b.pth``; SpCL's and cluster-contrast's
    ``resnet_ibn50a``. The stem and the last stage keep plain BatchNorm."""
    resnet = tv_resnet.resnet50(weights=None)
    for stage in (resnet.layer1, resnet.layer2, resnet.layer3):
        for block in stage:
            block.bn1 = IBN(block.conv1.out_channels)
    return ResNetBackbone(resnet, last_stride=last_stride)
