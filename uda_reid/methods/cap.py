"""CAP (Wang et al., AAAI 2021): camera-aware proxies as a method of its own.

Each epoch the target images are clustered (Jaccard k1 20, DBSCAN eps 0.5 in the recipes) and the
outliers sit the epoch out; every cluster gets one proxy per camera it was seen in (the normalised
mean feature). Batches hold 8 proxies × 4 images (proxy-balanced sampling), and the loss is CAP's
intra-camera term (cross-entropy over the proxies of the sample's own camera, summed over the
cameras of the batch) plus, from ``inter_start_epoch``, 0.5 × its inter-camera term (every proxy of
the cluster as a positive against the 50 hardest other proxies); τ 0.07; the proxies follow the
network by a momentum update (old weight 0.2) after each step. Facts: docs/methods.md §5 and the
authors' CAP-master code (train_cap.py, CamAwareMemory.py).

``--camera-proxies cap`` (the add-on ``addons.camera_proxies``) adds the same losses to another
method's own; this module is CAP as published, with nothing else in the loss. Under torchrun the loss is computed on the gathered
global batch and every process applies the same proxy update.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..clustering import ClusterResult
from ..config import FRACTION, NON_NEGATIVE, POSITIVE, setting
from ..memory import CameraAwareProxies
from .base import METHODS, AdaptContext, EpochLabels, Method, StepOutput


@dataclass
class CapOptions:
    temperature: float = setting(0.07, limit=POSITIVE, help="τ of both losses")
    momentum: float = setting(0.2, limit=FRACTION, help="weight the old proxy keeps in the update")
    hard_negatives: int = setting(50, limit=NON_NEGATIVE, help="other-cluster proxies in the inter-camera loss")
    inter_weight: float = setting(0.5, limit=NON_NEGATIVE)
    inter_start_epoch: int = setting(5, limit=NON_NEGATIVE, help="epochs counted from 0, as the reference's crosscam_epoch")


@METHODS.register("cap")
class CAP(Method):
    Options = CapOptions
    sampler = "proxy_balanced"
    excludes_add_ons = ("camera_proxies",)  # it is camera-aware proxies

    def __init__(self, config) -> None:
        super().__init__(config)
        o = self.options
        self.proxies = CameraAwareProxies(
            "cap", weight=1.0, temperature=o.temperature, num_hard_negatives=o.hard_negatives,
            inter_start_epoch=o.inter_start_epoch, inter_weight=o.inter_weight, momentum=o.momentum,
        )

    def on_clusters(self, result: ClusterResult, features: torch.Tensor, ctx: AdaptContext) -> EpochLabels:
        labels = result.labels
        figures: dict[str, float] = {"unclustered": int((labels < 0).sum())}
        if result.num_clusters > 0:
            cameras = np.array([s.camid for s in ctx.target_samples])
            figures.update(self.proxies.rebuild([features], labels, cameras, ctx.device))
        return EpochLabels(labels, figures)

    def training_step(self, ctx: AdaptContext, batch: dict[str, dict[str, torch.Tensor]]) -> StepOutput:
        target = batch["target"]
        features = ctx.model(target["image"].to(ctx.device, non_blocking=True)).features
        gather = ctx.dist.gather_batch  # the global batch (the identity in one process)
        labels = gather(target["label"].to(ctx.device))
        cameras = gather(target["camid"].to(ctx.device))
        loss = self.proxies.loss([gather(features)], labels, cameras, ctx.epoch)
        return StepOutput({"loss_cap": loss}, features)

    def after_step(self, ctx: AdaptContext) -> None:
        self.proxies.after_step()
