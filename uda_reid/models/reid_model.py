"""The re-ID network every method trains: backbone -> (extra BN) -> pooling -> (embedding) -> BN neck -> classifier."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..precision import autocast
from .backbones import build_backbone
from .necks import TOKEN_POOLING, BNNeck, build_pooling


class ReidOutput(NamedTuple):
    """What a training forward pass returns.

    ``pooled`` (``N×D``) is the feature before the BN neck (the triplet loss's input, BoT style);
    ``features`` (``N×D``) is the neck output (identity loss, memories, retrieval); ``logits``
    (``N×num_classes``) are ``None`` while the model has no classifier.
    """

    pooled: torch.Tensor
    features: torch.Tensor
    logits: torch.Tensor | None


class ReidModel(nn.Module):
    """Backbone + pooling + BN neck (+ classifier), the structure of SpCL, BoT and PPLR's global branch.

    Parameters
    ----------
    arch: backbone name in ``BACKBONES`` (``--arch``).
    num_classes: size of the bias-free linear classifier on the neck feature; 0 = no classifier
        (memory-based methods such as SpCL). Clustering changes it every round: see
        :meth:`reset_classifier`.
    pooling: ``"avg"``, ``"gem"`` or ``"max"`` for a convolutional backbone; ``"token"`` for a
        transformer, whose global feature is its class token (the map pools only PPLR's parts).
    last_stride: stride of layer4's first block (1 doubles the final map, the re-ID default).
    image_size: ``(height, width)`` of the input, for a transformer's position embeddings.
    drop_path: a transformer's stochastic depth (largest rate, over its blocks).
    neck: BatchNorm1d with frozen zero bias after pooling; ``False`` uses the pooled feature directly.
    extra_bn: the BatchNorm2d LUPerson fine-tuning puts on the backbone's output map, which
        re-calibrates the self-supervised features' statistics before pooling.
    embedding_dim: if > 0, a linear layer from the pooled ``C`` channels to this size before the neck.

    In train mode ``forward`` returns :class:`ReidOutput`; in eval mode it returns the L2-normalised
    neck features ``N×D`` used for retrieval and clustering.

    ``compute_dtype`` (bf16 / fp16, None = float32; the run's ``precision``, decided once and given
    when the model is built) is the dtype the backbone runs in under autocast; its map is returned as float32, so everything after it, and
    every output, is float32. It is not part of the state dict.
    """

    def __init__(
        self,
        arch: str = "resnet50",
        *,
        num_classes: int = 0,
        pooling: str = "avg",
        last_stride: int = 1,
        neck: bool = True,
        extra_bn: bool = False,
        embedding_dim: int = 0,
        compute_dtype: torch.dtype | None = None,
        image_size: tuple[int, int] = (256, 128),
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if num_classes < 0:
            raise ConfigError(f"num_classes must be >= 0 (got {num_classes!r})")
        if embedding_dim < 0:
            raise ConfigError(f"embedding_dim must be >= 0, 0 meaning no embedding layer (got {embedding_dim!r})")
        self.arch = arch
        self.pooling_name, self.image_size, self.drop_path = pooling, tuple(image_size), drop_path  # to rebuild it
        self.backbone = build_backbone(arch, last_stride=last_stride, image_size=image_size, drop_path=drop_path)
        channels: int = self.backbone.out_channels
        self.extra_bn: nn.BatchNorm2d | None = nn.BatchNorm2d(channels) if extra_bn else None
        token = getattr(self.backbone, "class_token", False)
        if token != (pooling == TOKEN_POOLING):
            raise ConfigError(f"model.pooling {pooling!r} does not fit {arch} (a transformer's feature is its class "
                              f"token, model.pooling 'token'; a convolutional map is pooled: avg, gem or max)")
        self.pooling: nn.Module | None = None if token else build_pooling(pooling)
        self.embedding: nn.Linear | None = None
        if embedding_dim > 0:
            self.embedding = nn.Linear(channels, embedding_dim)
            nn.init.kaiming_normal_(self.embedding.weight, mode="fan_out")
            nn.init.zeros_(self.embedding.bias)
        self._feature_dim = embedding_dim if embedding_dim > 0 else channels
        self.neck: BNNeck | None = BNNeck(self._feature_dim) if neck else None
        self.classifier: nn.Linear | None = None
        self.reset_classifier(num_classes)
        self.compute_dtype = compute_dtype

    @property
    def feature_dim(self) -> int:
        """Size ``D`` of the pooled, neck and retrieval features."""
        return self._feature_dim

    @property
    def num_classes(self) -> int:
        return 0 if self.classifier is None else self.classifier.out_features

    def reset_classifier(self, num_classes: int, weight: torch.Tensor | None = None) -> None:
        """Replace the classifier by a fresh bias-free ``Linear(D, num_classes)`` (0 removes it).

        ``weight`` (``num_classes×D``, e.g. L2-normalised cluster centroids as in PPLR) initialises it;
        otherwise it is drawn from N(0, 0.001²) as in BoT. The new layer lives on the model's device,
        so an optimiser built earlier must be rebuilt (or given the new parameters).
        """
        if num_classes < 0:
            raise ConfigError(f"num_classes must be >= 0 (got {num_classes!r})")
        if num_classes == 0:
            if weight is not None:
                raise ConfigError("a classifier weight was given but num_classes is 0")
            self.classifier = None
            return
        reference = next(self.backbone.parameters())
        classifier = nn.Linear(self.feature_dim, num_classes, bias=False)
        classifier = classifier.to(device=reference.device, dtype=reference.dtype)
        with torch.no_grad():
            if weight is None:
                nn.init.normal_(classifier.weight, std=0.001)
            else:
                expected = (num_classes, self.feature_dim)
                if tuple(weight.shape) != expected:
                    raise ConfigError(
                        f"classifier weight must have shape {expected} (num_classes×feature_dim), "
                        f"got {tuple(weight.shape)}"
                    )
                classifier.weight.copy_(weight)
        self.classifier = classifier

    def backbone_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``N×3×H×W`` -> (float32 map ``N×C×h×w`` after the extra BN when present: PPLR's part input,
        float32 class token ``N×C`` of a transformer or None)."""
        with autocast(images.device.type, self.compute_dtype):
            feature_map, token = self.backbone.features(images)
        feature_map = feature_map.float()
        if self.extra_bn is not None:
            feature_map = self.extra_bn(feature_map)
        return feature_map, None if token is None else token.float()

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """``N×3×H×W`` -> float32 backbone map ``N×C×h×w`` (see :meth:`backbone_features`)."""
        return self.backbone_features(images)[0]

    def global_feature(self, feature_map: torch.Tensor, token: torch.Tensor | None) -> torch.Tensor:
        """The pooled map, or a transformer's class token: ``N×C``."""
        return token if self.pooling is None else self.pooling(feature_map)

    def forward(self, images: torch.Tensor) -> ReidOutput | torch.Tensor:
        pooled = self.global_feature(*self.backbone_features(images))
        if self.embedding is not None:
            pooled = self.embedding(pooled)
        features = pooled if self.neck is None else self.neck(pooled)
        if not self.training:
            return F.normalize(features, dim=1)
        logits = None if self.classifier is None else self.classifier(features)
        return ReidOutput(pooled=pooled, features=features, logits=logits)
