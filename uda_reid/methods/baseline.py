"""The clustering baseline (Song et al., Pattern Recognition 2020, as GDS builds on it).

Each epoch the target images are clustered; outliers sit the epoch out; a bias-free classifier over
the clusters is re-initialised from the L2-normalised cluster centroids (so the first step already
scores each image against its cluster instead of a random head) and trained with cross-entropy on
the BN-neck feature, plus the soft-margin batch-hard triplet loss on the pooled feature. Start it
from a source-trained model (``adapt.source_pretrain_epochs`` or ``--init``); GDS adds its term with
``--gds`` / ``--gds-hard``. Facts: docs/methods.md §3.

Under torchrun the cross-entropy stays on each process's slice (the classifier's gradients are
averaged by the loop); the batch-hard triplet and the camera losses see the gathered global batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..clustering import ClusterResult
from ..config import FRACTION, NON_NEGATIVE, setting
from ..losses import batch_hard_triplet_loss
from ..memory import class_centroids
from .base import METHODS, AdaptContext, EpochLabels, Method, StepOutput


@dataclass
class BaselineOptions:
    id_loss_weight: float = setting(1.0, limit=NON_NEGATIVE)
    triplet_loss_weight: float = setting(1.0, limit=NON_NEGATIVE)
    label_smoothing: float = setting(0.1, limit=FRACTION)
    triplet_margin: float = setting(0.0, limit=NON_NEGATIVE, help="0: soft margin softplus(d_ap − d_an)")


def centroid_classifier(features: torch.Tensor, labels: np.ndarray, device: torch.device) -> nn.Linear:
    """Bias-free ``Linear(D, C)`` whose rows are the L2-normalised centroids of clusters 0..C−1."""
    clustered = labels >= 0
    centroids = class_centroids(features[torch.from_numpy(clustered)], torch.from_numpy(labels[clustered]))
    classifier = nn.Linear(centroids.shape[1], centroids.shape[0], bias=False)
    with torch.no_grad():
        classifier.weight.copy_(centroids)
    return classifier.to(device)


@METHODS.register("baseline")
class ClusteringBaseline(Method):
    Options = BaselineOptions

    def __init__(self, config) -> None:
        super().__init__(config)
        self.classifier: nn.Linear | None = None

    def on_clusters(self, result: ClusterResult, features: torch.Tensor, ctx: AdaptContext) -> EpochLabels:
        labels = result.labels
        self.classifier = centroid_classifier(features, labels, ctx.device) if result.num_clusters > 0 else None
        return EpochLabels(labels, {"unclustered": int((labels < 0).sum())})

    def head_parameters(self) -> list[nn.Parameter]:
        return [] if self.classifier is None else list(self.classifier.parameters())

    def training_step(self, ctx: AdaptContext, batch: dict[str, dict[str, torch.Tensor]]) -> StepOutput:
        o = self.options
        images = batch["target"]["image"].to(ctx.device, non_blocking=True)
        labels = batch["target"]["label"].to(ctx.device)
        output = ctx.model(images)
        gather = ctx.dist.gather_batch  # the global batch (the identity in one process)
        batch_labels = gather(labels)
        losses = {
            "loss_id": o.id_loss_weight
            * F.cross_entropy(self.classifier(output.features), labels, label_smoothing=o.label_smoothing),
            "loss_triplet": o.triplet_loss_weight
            * batch_hard_triplet_loss(gather(output.pooled), batch_labels, margin=o.triplet_margin),
        }
        return StepOutput(losses, output.features)
