"""Cluster Contrast (Dai et al., 2021; alibaba/cluster-contrast-reid): one memory row per cluster.

Each epoch the loop extracts every target feature (eval mode) and clusters it (Jaccard k1 30, k2 6,
DBSCAN eps 0.6); outliers sit the epoch out. The memory is rebuilt from the L2-normalised mean
feature of each cluster; the loss is the cross-entropy of f·Mᵀ/τ (τ 0.05) against the sample's
cluster, and after each step the sample's row moves towards it: M[y] ← normalise(m·M[y] + (1−m)·f),
m = 0.1 (the published runs; the script's default 0.2 is not what produced the paper's numbers).
The recipes set GeM pooling and batches of 16 clusters × 16 images; ``hard_update`` is the
repository's ``--use-hard`` (TransReID-SSL's ViT recipes use it). Facts: docs/methods.md §8.

A hybrid memory whose rows are the clusters (labels 0..C−1) is exactly this cluster memory: each
class has one row, so its score is that row's logit; no second memory class is needed. Combines
with ``--camera-proxies`` (on the neck feature) and ``--gds``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..clustering import ClusterResult
from ..config import FRACTION, POSITIVE, setting
from ..memory import HybridMemory, class_centroids
from .base import METHODS, AdaptContext, EpochLabels, Method, StepOutput


@dataclass
class ClusterContrastOptions:
    temperature: float = setting(0.05, limit=POSITIVE)
    momentum: float = setting(0.1, limit=FRACTION, help="weight the old cluster row keeps")
    hard_update: bool = setting(False, help="the reference's --use-hard: each cluster of the batch moves once, "
                                            "towards its least similar instance, instead of towards every one in turn")


@METHODS.register("cluster_contrast")
class ClusterContrast(Method):
    Options = ClusterContrastOptions

    def __init__(self, config) -> None:
        super().__init__(config)
        self.memory: HybridMemory | None = None
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def on_clusters(self, result: ClusterResult, features: torch.Tensor, ctx: AdaptContext) -> EpochLabels:
        labels = result.labels
        figures: dict[str, float] = {"unclustered": int((labels < 0).sum())}
        self.memory = None
        if result.num_clusters > 0:
            clustered = torch.from_numpy(labels >= 0)
            centroids = class_centroids(features[clustered], torch.from_numpy(labels[labels >= 0]))
            o = self.options
            self.memory = HybridMemory(centroids.shape[1], centroids.shape[0], temperature=o.temperature,
                                       momentum=o.momentum).to(ctx.device)
            self.memory.initialize(centroids, torch.arange(centroids.shape[0]))
        return EpochLabels(labels, figures)

    def training_step(self, ctx: AdaptContext, batch: dict[str, dict[str, torch.Tensor]]) -> StepOutput:
        target = batch["target"]
        labels = target["label"].to(ctx.device)
        features = ctx.model(target["image"].to(ctx.device, non_blocking=True)).features
        losses = {"loss_cluster": self.memory.loss(features, labels)}
        gather = ctx.dist.gather_batch  # the global batch (the identity in one process)
        batch_features, batch_labels = gather(features), gather(labels)
        self._pending = (batch_features.detach(), batch_labels)
        return StepOutput(losses, features)

    def after_step(self, ctx: AdaptContext) -> None:
        # The global batch in its order: the update one process would make, on every process.
        if self._pending is not None:
            features, labels = self._pending
            if self.options.hard_update:
                features, labels = hardest_instances(features, labels, self.memory.features)
            self.memory.update(features, labels)
            self._pending = None


def hardest_instances(features: torch.Tensor, labels: torch.Tensor,
                      rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each cluster of the batch (in label order), its instance least similar to its memory row:
    (``K×D`` features, their ``K`` labels)."""
    similarity = (torch.nn.functional.normalize(features, dim=1) * rows[labels].to(features)).sum(dim=1)
    picked = [int(torch.nonzero(labels == label).flatten()[similarity[labels == label].argmin()])
              for label in torch.unique(labels)]
    picked_rows = torch.tensor(picked, device=labels.device)
    return features[picked_rows], labels[picked_rows]
