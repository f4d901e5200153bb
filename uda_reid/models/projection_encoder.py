"""MoCo v2's encoder (backbone -> average pool -> 2-layer MLP -> L2 norm) and UP-ReID's patch partition."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..precision import autocast
from .backbones import build_backbone


class ProjectionEncoder(nn.Module):
    """A backbone whose pooled feature (a transformer's class token) goes through MoCo v2's MLP head (``fc.0`` C→C, ReLU, ``fc.2`` C→dim).

    The head's keys are MoCo's (``fc.0.*``, ``fc.2.*``) and the backbone's are torchvision's, so the
    checkpoint importer reads a saved encoder like a LUPerson MoCo file. ``last_stride`` 2 is the plain
    ResNet the published pre-training used (fine-tuning switches to 1; the weights are the same).
    """

    def __init__(self, arch: str = "resnet50", *, dim: int = 128, last_stride: int = 2,
                 compute_dtype: torch.dtype | None = None, image_size: tuple[int, int] = (256, 128)) -> None:
        super().__init__()
        self.backbone = build_backbone(arch, last_stride=last_stride, image_size=image_size)
        channels = self.backbone.out_channels
        self.fc = nn.Sequential(nn.Linear(channels, channels), nn.ReLU(inplace=True), nn.Linear(channels, dim))
        self.compute_dtype = compute_dtype  # the run's precision for the backbone (None: float32)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``N×3×H×W`` -> ``N×dim`` L2-normalised projections (float32, whatever ``compute_dtype``)."""
        with autocast(images.device.type, self.compute_dtype):
            feature_map, token = self.backbone.features(images)
            pooled = feature_map.mean(dim=(2, 3)) if token is None else token  # a transformer's class token
        return F.normalize(self.fc(pooled.float()), dim=1)


def cut_patches(images: torch.Tensor, stripes: int = 4, columns: int = 2) -> torch.Tensor:
    """``N×3×H×W`` -> ``(N·M)×3×(H/stripes)×(W/columns)``, M = stripes·columns, image-major.

    Patch ``i`` of an image is stripe ``i // columns`` (top to bottom), column ``i % columns`` (left to
    right): UP-ReID's 4 horizontal stripes × 2 halves. H and W must divide evenly.
    """
    n, c, height, width = images.shape
    if height % stripes or width % columns:
        raise ValueError(f"images of {height}×{width} do not split into {stripes}×{columns} equal patches")
    h, w = height // stripes, width // columns
    patches = images.reshape(n, c, stripes, h, columns, w).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(n * stripes * columns, c, h, w)


def mirrored_patch(index: int, columns: int = 2) -> int:
    """The horizontally symmetric patch of ``index``: same stripe, mirrored column."""
    stripe, column = divmod(index, columns)
    return stripe * columns + (columns - 1 - column)
