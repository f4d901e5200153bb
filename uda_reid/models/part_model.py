"""PPLR's network: the global re-ID model plus horizontal part stripes, each with its own BN neck.

The global branch is exactly :class:`ReidModel` (same modules, same state-dict keys), so a plain
checkpoint initialises it and its weights export back to a plain model for ``udareid evaluate``;
the part branch only adds keys under :data:`PART_KEY_PREFIXES`. Facts: docs/methods.md §4.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..centroids import class_centroids
from .necks import BNNeck, HorizontalPartPooling
from .reid_model import ReidModel

#: State-dict prefixes of the part branch; everything else is a plain ReidModel key.
PART_KEY_PREFIXES = ("part_necks.", "part_classifiers.")


class PartReidOutput(NamedTuple):
    """What a training forward pass of :class:`PartReidModel` returns.

    Global: ``pooled`` / ``features`` ``N×D`` (before / after the BN neck) and ``logits``
    ``N×K``. Parts, stacked along a leading part axis so a loss can treat them at once:
    ``part_pooled`` / ``part_features`` ``P×N×C`` (C = backbone channels) and ``part_logits``
    ``P×N×K``. Logits are ``None`` while the model has no classifiers.
    """

    pooled: torch.Tensor
    features: torch.Tensor
    logits: torch.Tensor | None
    part_pooled: torch.Tensor
    part_features: torch.Tensor
    part_logits: torch.Tensor | None


class PartReidModel(ReidModel):
    """:class:`ReidModel` + ``num_parts`` horizontal stripes of the backbone map (PPLR).

    Each stripe is average-pooled (``HorizontalPartPooling``), goes through its own BN neck
    (identity when ``neck=False``, like the global branch) and its own bias-free classifier. The
    part features have the backbone's ``C`` channels (:attr:`part_feature_dim`), even when an
    ``embedding_dim`` resizes the global feature.

    In eval mode ``forward`` returns what ``ReidModel`` returns (the L2-normalised global feature
    ``N×D``, parts not computed), so evaluation and ``extract_features`` work unchanged;
    :meth:`forward_all` gives global and part features from one backbone pass.
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
        num_parts: int = 3,
        compute_dtype: torch.dtype | None = None,
        image_size: tuple[int, int] = (256, 128),
        drop_path: float = 0.0,
    ) -> None:
        if isinstance(num_parts, bool) or not isinstance(num_parts, int) or num_parts < 1:
            raise ConfigError(f"num_parts must be an integer >= 1 (got {num_parts!r})")
        super().__init__(
            arch,
            num_classes=num_classes,
            pooling=pooling,
            last_stride=last_stride,
            neck=neck,
            extra_bn=extra_bn,
            embedding_dim=embedding_dim,
            compute_dtype=compute_dtype,
            image_size=image_size,
            drop_path=drop_path,
        )
        self.num_parts = num_parts
        channels: int = self.backbone.out_channels
        self.part_pooling = HorizontalPartPooling(num_parts)
        self.part_necks = nn.ModuleList(BNNeck(channels) if neck else nn.Identity() for _ in range(num_parts))
        self.part_classifiers: nn.ModuleList | None = self._new_part_classifiers(num_classes, None)

    @property
    def part_feature_dim(self) -> int:
        """Size ``C`` of each part feature (the backbone's output channels)."""
        return int(self.backbone.out_channels)

    # ------------------------------------------------------------------ classifiers

    def reset_classifiers(
        self,
        num_classes: int,
        global_weight: torch.Tensor | None = None,
        part_weights: torch.Tensor | Sequence[torch.Tensor] | None = None,
    ) -> None:
        """Replace the global and every part classifier by fresh bias-free ``Linear`` layers.

        ``global_weight`` ``K×D`` and ``part_weights`` ``P×K×C`` (or P tensors ``K×C``) initialise
        them (PPLR: the L2-normalised cluster centroids, so logits = neck feature · centroid);
        without weights they are drawn from N(0, 0.001²). 0 classes removes all classifiers (the
        inherited ``reset_classifier`` replaces the global one only). The new layers live on the
        model's device: give them to the optimiser (see :meth:`classifier_parameters`).
        """
        self._check_part_weights(num_classes, part_weights)
        self.reset_classifier(num_classes, global_weight)
        self.part_classifiers = self._new_part_classifiers(num_classes, part_weights)

    def _check_part_weights(self, num_classes: int, part_weights: torch.Tensor | Sequence[torch.Tensor] | None) -> None:
        if part_weights is None:
            return
        if num_classes == 0:
            raise ConfigError("part classifier weights were given but num_classes is 0")
        if len(part_weights) != self.num_parts:
            raise ConfigError(
                f"part classifier weights must hold one K×C matrix per part ({self.num_parts} parts), "
                f"got {len(part_weights)}"
            )
        expected = (num_classes, self.part_feature_dim)
        for part, weight in enumerate(part_weights):
            if tuple(weight.shape) != expected:
                raise ConfigError(
                    f"classifier weight of part {part} must have shape {expected} "
                    f"(num_classes×part_feature_dim), got {tuple(weight.shape)}"
                )

    def _new_part_classifiers(
        self, num_classes: int, part_weights: torch.Tensor | Sequence[torch.Tensor] | None
    ) -> nn.ModuleList | None:
        if num_classes == 0:
            return None
        reference = next(self.backbone.parameters())
        classifiers = []
        for part in range(self.num_parts):
            classifier = nn.Linear(self.part_feature_dim, num_classes, bias=False)
            classifier = classifier.to(device=reference.device, dtype=reference.dtype)
            with torch.no_grad():
                if part_weights is None:
                    nn.init.normal_(classifier.weight, std=0.001)
                else:
                    classifier.weight.copy_(part_weights[part])
            classifiers.append(classifier)
        return nn.ModuleList(classifiers)

    def reset_classifiers_from_clusters(
        self, global_features: torch.Tensor, part_features: torch.Tensor, labels: np.ndarray | torch.Tensor
    ) -> int:
        """PPLR's per-epoch heads: classifiers initialised from L2-normalised cluster centroids.

        ``global_features`` ``N×D``, ``part_features`` ``P×N×C`` (e.g. from
        ``extract_part_features``), ``labels`` ``N`` with clusters 0..K−1 and −1 for outliers
        (left out). Returns K; with no cluster the classifiers are removed. Inputs are not modified.
        """
        labels = torch.as_tensor(labels)
        if labels.dim() != 1 or labels.shape[0] != global_features.shape[0]:
            raise ValueError(
                f"need one label per feature row ({global_features.shape[0]}), got shape {tuple(labels.shape)}"
            )
        if part_features.dim() != 3 or part_features.shape[0] != self.num_parts or part_features.shape[1] != labels.shape[0]:
            raise ValueError(
                f"part_features must be P×N×C = {self.num_parts}×{labels.shape[0]}×C, got {tuple(part_features.shape)}"
            )
        clustered = labels >= 0
        if not bool(clustered.any()):
            self.reset_classifiers(0)
            return 0
        kept = labels[clustered].long()
        num_classes = int(kept.max()) + 1
        global_weight = class_centroids(global_features[clustered.to(global_features.device)], kept)
        part_weights = [
            class_centroids(part_features[part][clustered.to(part_features.device)], kept)
            for part in range(self.num_parts)
        ]
        self.reset_classifiers(num_classes, global_weight, part_weights)
        return num_classes

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict``, after sizing the classifiers to the ones ``state_dict`` holds.

        The heads' size is the number of clusters of the epoch that wrote the state, so a fresh
        model (no heads, or another epoch's) could not take a mid-run state otherwise. Only done
        when the state holds the global and every part classifier with one class count.
        """
        weights = [state_dict.get("classifier.weight")]
        weights += [state_dict.get(f"part_classifiers.{part}.weight") for part in range(self.num_parts)]
        if all(isinstance(weight, torch.Tensor) and weight.dim() == 2 for weight in weights):
            class_counts = {int(weight.shape[0]) for weight in weights}
            if len(class_counts) == 1 and self._head_sizes() != class_counts:
                self.reset_classifiers(class_counts.pop())
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _head_sizes(self) -> set[int]:
        sizes = {self.num_classes}
        if self.part_classifiers is not None:
            sizes |= {head.out_features for head in self.part_classifiers}
        return sizes

    def classifier_parameters(self) -> list[nn.Parameter]:
        """The parameters :meth:`reset_classifiers` re-creates (global and part classifiers)."""
        params = [] if self.classifier is None else list(self.classifier.parameters())
        if self.part_classifiers is not None:
            params += list(self.part_classifiers.parameters())
        return params

    # ------------------------------------------------------------------ forward

    def _global_branch(self, feature_map: torch.Tensor, token: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone map ``N×C×h×w`` (or a transformer's class token) -> (pooled, neck feature), both
        ``N×D``, as ``ReidModel.forward``."""
        pooled = self.global_feature(feature_map, token)
        if self.embedding is not None:
            pooled = self.embedding(pooled)
        features = pooled if self.neck is None else self.neck(pooled)
        return pooled, features

    def _part_branch(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone map ``N×C×h×w`` -> (pooled stripes, neck features), both ``P×N×C``."""
        part_pooled = self.part_pooling(feature_map).permute(2, 0, 1)  # N×C×P -> P×N×C
        part_features = torch.stack([neck(stripe) for neck, stripe in zip(self.part_necks, part_pooled)])
        return part_pooled, part_features

    def forward(self, images: torch.Tensor) -> PartReidOutput | torch.Tensor:
        if not self.training:
            return super().forward(images)
        feature_map, token = self.backbone_features(images)
        pooled, features = self._global_branch(feature_map, token)
        part_pooled, part_features = self._part_branch(feature_map)
        logits = None if self.classifier is None else self.classifier(features)
        part_logits = None
        if self.part_classifiers is not None:
            part_logits = torch.stack([head(f) for head, f in zip(self.part_classifiers, part_features)])
        return PartReidOutput(pooled, features, logits, part_pooled, part_features, part_logits)

    def forward_all(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One backbone pass -> L2-normalised neck features: global ``N×D`` and parts ``P×N×C``.

        What PPLR clusters (global) and scores cross-agreement with (parts). Call it in eval mode
        (BN running statistics) under ``torch.no_grad()`` for extraction.
        """
        feature_map, token = self.backbone_features(images)
        _, features = self._global_branch(feature_map, token)
        _, part_features = self._part_branch(feature_map)
        return F.normalize(features, dim=1), F.normalize(part_features, dim=2)

    @classmethod
    def from_reid_model(cls, model: ReidModel, *, num_parts: int = 3) -> PartReidModel:
        """A part model whose global branch is a copy of ``model`` (same settings and weights).

        For a method's ``prepare_model``: the loop builds (and initialises) a plain model, PPLR
        adds the part branch; the part necks start fresh (weight 1, bias 0). The result is on
        ``model``'s device and dtype; ``model`` is not modified.
        """
        if type(model) is not ReidModel:
            raise TypeError(f"from_reid_model needs a plain ReidModel, got {type(model).__name__}")
        part_model = cls(
            model.arch,
            num_classes=model.num_classes,
            pooling=model.pooling_name,
            last_stride=int(getattr(model.backbone, "last_stride", 1)),
            image_size=model.image_size,
            drop_path=model.drop_path,
            neck=model.neck is not None,
            extra_bn=model.extra_bn is not None,
            embedding_dim=0 if model.embedding is None else model.embedding.out_features,
            num_parts=num_parts,
            compute_dtype=model.compute_dtype,
        )
        reference = next(model.parameters())
        part_model = part_model.to(device=reference.device, dtype=reference.dtype)
        missing, unexpected = part_model.load_state_dict(model.state_dict(), strict=False)
        leftover = [key for key in missing if not key.startswith(PART_KEY_PREFIXES)]
        if leftover or unexpected:
            raise CheckpointError(
                f"the plain model's weights do not fit the part model: missing {leftover[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
        part_model.train(model.training)
        return part_model


def part_model_to_plain(state: Mapping[str, torch.Tensor], *, drop_classifier: bool = False) -> dict[str, torch.Tensor]:
    """The state dict of the plain :class:`ReidModel` inside a :class:`PartReidModel` state dict.

    Drops the part branch (keys under :data:`PART_KEY_PREFIXES`); with ``drop_classifier`` also the
    global classifier, whose size (the number of clusters) changes every epoch and which
    evaluation does not use. The result loads strictly into ``ReidModel`` with the same settings
    (and ``num_classes`` = classifier rows, or 0 when dropped). Tensors are shared, not copied.
    """
    plain = {key: value for key, value in state.items() if not key.startswith(PART_KEY_PREFIXES)}
    if drop_classifier:
        plain = {key: value for key, value in plain.items() if not key.startswith("classifier.")}
    return plain
