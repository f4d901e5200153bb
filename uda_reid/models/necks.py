"""What sits between a backbone's feature map and the loss: pooling and the BN neck.

Pooling modules turn a map ``N×C×h×w`` into a vector ``N×C`` and are registered by name in
:data:`POOLINGS` (the ``--pooling`` option). :class:`HorizontalPartPooling` gives the ``N×C×P`` stripes
PPLR trains on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..registry import Registry

POOLINGS: Registry[type[nn.Module]] = Registry("pooling", "--pooling")
#: ``model.pooling`` of a transformer: its class token is the global feature, nothing is pooled.
TOKEN_POOLING = "token"


@POOLINGS.register("avg")
class GlobalAvgPooling(nn.Module):
    """Mean over all positions: ``N×C×h×w`` -> ``N×C`` (SpCL, PPLR, BoT)."""

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return feature_map.mean(dim=(2, 3))


@POOLINGS.register("max")
class GlobalMaxPooling(nn.Module):
    """Maximum over all positions: ``N×C×h×w`` -> ``N×C``."""

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return feature_map.amax(dim=(2, 3))


@POOLINGS.register("gem")
class GeneralizedMeanPooling(nn.Module):
    """Generalised mean (GeM): ``(mean x^p)^(1/p)`` per channel, ``N×C×h×w`` -> ``N×C``.

    p = 1 is average pooling and p -> inf approaches max pooling; a learnable p (default 3, as in
    fast-reid's GeM) lets training pick how much the strongest activations dominate. Activations are
    clamped to ``eps`` first because a fractional power of a non-positive number is undefined.
    """

    def __init__(self, p: float = 3.0, *, eps: float = 1e-6, learnable: bool = True) -> None:
        super().__init__()
        if p <= 0:
            raise ConfigError(f"GeM pooling power p must be positive (got {p!r})")
        if eps <= 0:
            raise ConfigError(f"GeM pooling eps must be positive (got {eps!r})")
        self.p = nn.Parameter(torch.tensor(float(p)), requires_grad=learnable)
        self.eps = eps

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        powered = feature_map.clamp(min=self.eps).pow(self.p)
        return powered.mean(dim=(2, 3)).pow(1.0 / self.p)

    def extra_repr(self) -> str:
        return f"p={self.p.item():.4f}, eps={self.eps}"


def build_pooling(name: str) -> nn.Module:
    """Build a global pooling by name (``"avg"``, ``"gem"`` or ``"max"``); unknown names list the valid ones."""
    return POOLINGS.get(name)()


class HorizontalPartPooling(nn.Module):
    """Average pooling into ``num_parts`` horizontal stripes: ``N×C×h×w`` -> ``N×C×P``.

    PPLR's part features: the map is split top to bottom into equal stripes (adaptive pooling, so a
    height that ``num_parts`` does not divide gives slightly overlapping stripes).
    """

    def __init__(self, num_parts: int = 3) -> None:
        super().__init__()
        if num_parts < 1:
            raise ConfigError(f"number of parts must be at least 1 (got {num_parts!r})")
        self.num_parts = num_parts

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(feature_map, (self.num_parts, 1)).squeeze(-1)

    def extra_repr(self) -> str:
        return f"num_parts={self.num_parts}"


class BNNeck(nn.BatchNorm1d):
    """BatchNorm1d whose shift (bias) is fixed at zero: ``N×C`` -> ``N×C``.

    The BoT / SpCL "BN neck": the identity loss sees the normalised feature while the triplet loss sees
    the pooled one. Without a shift the normalised features stay centred on the origin, which suits
    cosine similarity and classifiers without bias. The bias stays in the state dict (so checkpoints
    of SpCL-style models load) but is not trainable.
    """

    def __init__(self, num_features: int, *, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.bias.requires_grad_(False)  # BatchNorm's own initialisation already sets it to 0
