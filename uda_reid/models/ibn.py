"""Instance-batch normalisation (IBN, Pan et al., ECCV 2018): InstanceNorm on the first half of the
channels, BatchNorm on the rest.

Instance normalisation removes per-image appearance statistics (colour cast, contrast: what changes
between cameras and datasets) while batch normalisation keeps the content features discriminative,
which is why re-ID backbones that must transfer across domains use it: ResNet-50-IBN-a
(``resnet_ibn.py``) in its first three stages, and TransReID-SSL's convolution stem of the LUPerson
ViTs (``vit.py``). The sub-modules are named ``IN`` and ``BN``, the names IBN-Net's and
TransReID-SSL's released weights use (``layer1.0.bn1.IN.weight``, ``patch_embed.conv.1.BN.running_mean``).
"""

from __future__ import annotations

import torch
from torch import nn


class IBN(nn.Module):
    """``IN`` (affine, no running statistics: it normalises each image in eval mode too) on the first
    ``int(channels × in_share)`` channels, ``BN`` on the others, concatenated back in that order."""

    def __init__(self, channels: int, in_share: float = 0.5) -> None:
        super().__init__()
        self.half = int(channels * in_share)
        self.IN = nn.InstanceNorm2d(self.half, affine=True)  # noqa: N815 (the released weights' key name)
        self.BN = nn.BatchNorm2d(channels - self.half)  # noqa: N815

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, rest = torch.split(x, [self.half, x.shape[1] - self.half], dim=1)
        return torch.cat([self.IN(first.contiguous()), self.BN(rest.contiguous())], dim=1)
