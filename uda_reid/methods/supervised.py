"""Supervised training on a labelled dataset: ID loss (label smoothing) + batch-hard triplet.

The usual re-ID baseline (BoT style) and stage 1 of UDA. It runs on the same engine as the
adaptation methods: its "clustering" is the identity (the training labels are the dataset's person
ids, every epoch), its settings are the ``train`` section, and its batches hold P distinct
identities × K images (``distinct_identities``).

Under torchrun the identity loss stays on each process's slice; the batch-hard triplet sees the
gathered global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..clustering import ClusterResult
from ..data.datasets import Sample
from ..losses import batch_hard_triplet_loss
from .base import METHODS, AdaptContext, EpochLabels, Method, StepOutput


@METHODS.register("supervised")
class Supervised(Method):
    sampler = "distinct_identities"
    settings_section = "train"
    clusters = False
    evaluates_initial_model = False

    def num_classes(self, samples: list[Sample]) -> int:
        return len({s.pid for s in samples})

    def on_clusters(self, result: ClusterResult, features: torch.Tensor | None, ctx: AdaptContext) -> EpochLabels:
        return EpochLabels(result.labels)

    def training_step(self, ctx: AdaptContext, batch: dict[str, dict[str, torch.Tensor]]) -> StepOutput:
        train = self.config.train
        images = batch["target"]["image"].to(ctx.device, non_blocking=True)
        labels = batch["target"]["label"].to(ctx.device)
        output = ctx.model(images)
        gather = ctx.dist.gather_batch  # the global batch (the identity in one process)
        loss_id = F.cross_entropy(output.logits, labels, label_smoothing=train.label_smoothing)
        loss_triplet = batch_hard_triplet_loss(gather(output.pooled), gather(labels), margin=train.triplet_margin)
        accuracy = (output.logits.argmax(dim=1) == labels).float().mean()
        return StepOutput(
            {"loss_id": train.id_loss_weight * loss_id, "loss_triplet": train.triplet_loss_weight * loss_triplet},
            output.features,
            figures={"train_acc": accuracy},
        )
