"""SpCL (Ge et al., NeurIPS 2020): self-paced contrastive learning with a hybrid memory.

Losses: the unified contrastive loss of the hybrid memory on a target batch (and, in UDA, on a
source batch; the model has domain-specific BN). Clustering runs on the memory's target rows;
self-paced reliability keeps a point clustered only when its cluster is independent and compact,
and returns the others to the memory as un-clustered instances. Facts: docs/methods.md §2.

Under torchrun each process computes the loss of its slice of the batch (a mean of per-sample
terms, so DDP's gradient average is the global batch's), and every process applies the memory
update of the whole global batch in its order, so the memories stay identical.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..clustering import ClusterResult, DBSCANClusterer
from ..clustering.reliability import SelfPacedCriterion, unique_outlier_labels
from ..config import FRACTION, NON_NEGATIVE, POSITIVE, PROBABILITY, setting
from ..models.features import extract_features
from ..memory import HybridMemory, class_centroids
from ..models.batchnorm import bn_domain, convert_to_domain_specific_bn, domain_specific_to_plain
from .base import METHODS, AdaptContext, EpochLabels, Method, StepOutput


@dataclass
class SpclOptions:
    temperature: float = setting(0.05, limit=POSITIVE, help="τ of the hybrid memory's logits")
    momentum: float = setting(0.2, limit=FRACTION, help="weight the old memory row keeps")
    self_paced: bool = setting(True, help="reliability criteria (DBSCAN only)")
    eps_gap: float = setting(0.02, limit=NON_NEGATIVE, help="tight / loose eps = eps ∓ gap")
    quantile: float = setting(0.9, limit=PROBABILITY, help="independence threshold position, fixed at the first epoch")
    domain_specific_bn: bool = setting(True, help="UDA only")


@METHODS.register("spcl")
class SpCL(Method):
    Options = SpclOptions

    def __init__(self, config) -> None:
        super().__init__(config)
        self.uda = config.source is not None
        self.memory: HybridMemory | None = None
        self.criterion = SelfPacedCriterion(quantile=self.options.quantile)
        self.num_source_classes = 0
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []

    @property
    def uses_source_batches(self) -> bool:
        return self.uda

    @property
    def _dsbn(self) -> bool:
        return self.uda and self.options.domain_specific_bn

    @property
    def _self_paced(self) -> bool:
        return self.options.self_paced and self.config.clustering.clusterer == "dbscan"

    def ignored_settings(self) -> list[str]:
        if self.options.self_paced and not self._self_paced:
            return [f"method_options.self_paced is ignored with clustering.clusterer {self.config.clustering.clusterer}: "
                    f"SpCL's reliability criterion re-runs DBSCAN at eps ± eps_gap (set self_paced: false to silence this)"]
        return []

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return convert_to_domain_specific_bn(model) if self._dsbn else model

    def setup(self, ctx: AdaptContext, state: dict[str, Any] | None = None) -> None:
        self.num_source_classes = ctx.num_source_classes
        num_rows = self.num_source_classes + len(ctx.target_samples)
        if state is not None:
            feature_dim = state["memory"]["features"].shape[1]
        else:
            initial = self._initial_rows(ctx)
            feature_dim = initial.shape[1]
        self.memory = HybridMemory(
            feature_dim, num_rows, temperature=self.options.temperature, momentum=self.options.momentum
        ).to(ctx.device)
        if state is not None:
            self.memory.load_state_dict(state["memory"])
            self.criterion.load_state_dict(state["criterion"])
        else:
            self.memory.initialize(initial, torch.arange(num_rows))

    def _initial_rows(self, ctx: AdaptContext) -> torch.Tensor:
        """Source class centroids (UDA) followed by every target image's feature."""
        rows = []
        model = ctx.unwrapped_model
        if self.uda:
            with bn_domain(model, "source"):  # a no-op without domain-specific BN
                source = extract_features(model, ctx.source_samples, self.config.data, device=ctx.device,
                                          progress=ctx.progress, desc="source features", dist=ctx.dist)
            rows.append(class_centroids(source, torch.tensor([s.pid for s in ctx.source_samples])))
        rows.append(extract_features(model, ctx.target_samples, self.config.data, device=ctx.device,
                                     progress=ctx.progress, desc="target features", dist=ctx.dist))
        return torch.cat(rows)

    def target_features(self, ctx: AdaptContext) -> torch.Tensor:
        return self.memory.features[self.num_source_classes :].detach().cpu()

    def cluster_max_distance(self) -> float | str | None:
        # The loose reliability pass reads entries up to eps + gap.
        return self.config.clustering.eps + self.options.eps_gap if self._self_paced else "auto"

    def on_clusters(self, result: ClusterResult, features: torch.Tensor, ctx: AdaptContext) -> EpochLabels:
        labels = result.labels
        figures: dict[str, float] = {}
        if self._self_paced and result.distance is not None and result.num_clusters > 0:
            eps, gap, min_samples = self.config.clustering.eps, self.options.eps_gap, self.config.clustering.min_samples
            # An eps derived from the data (clustering.eps auto) can be below the gap: the tight pass then
            # keeps only identical encodings, rather than failing on a negative eps.
            tight = DBSCANClusterer(eps=max(eps - gap, 1e-6), min_samples=min_samples).fit_predict(result.distance)
            loose = DBSCANClusterer(eps=eps + gap, min_samples=min_samples).fit_predict(result.distance)
            refined = self.criterion(labels, tight, loose)
            labels = refined.labels
            figures["reliable_clusters"] = refined.num_clusters
        training = unique_outlier_labels(labels)
        figures["unclustered"] = int((labels < 0).sum())
        source_rows = np.arange(self.num_source_classes)
        self.memory.set_labels(torch.from_numpy(np.concatenate([source_rows, self.num_source_classes + training])))
        return EpochLabels(training, figures)

    def training_step(self, ctx: AdaptContext, batch: dict[str, dict[str, torch.Tensor]]) -> StepOutput:
        losses = {}
        self._pending = []
        if self.uda:
            images = batch["source"]["image"].to(ctx.device, non_blocking=True)
            rows = batch["source"]["pid"].to(ctx.device)
            with bn_domain(ctx.model, "source"):  # a no-op without domain-specific BN
                features = ctx.model(images).features
            losses["loss_source"] = self.memory.loss(features, rows)
            self._pending.append((ctx.dist.gather_batch(features.detach()), ctx.dist.gather_batch(rows)))
        images = batch["target"]["image"].to(ctx.device, non_blocking=True)
        rows = batch["target"]["index"].to(ctx.device) + self.num_source_classes
        features = ctx.model(images).features
        losses["loss_target"] = self.memory.loss(features, rows)
        self._pending.append((ctx.dist.gather_batch(features.detach()), ctx.dist.gather_batch(rows)))
        return StepOutput(losses, features)

    def after_step(self, ctx: AdaptContext) -> None:
        # The global batch in its order (source, then target): the update one process would make.
        for features, rows in self._pending:
            self.memory.update(features, rows)
        self._pending = []

    def export_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        state = model.state_dict()
        return domain_specific_to_plain(state, domain="target") if self._dsbn else state

    def state_dict(self) -> dict[str, Any]:
        return {"memory": self.memory.state_dict(), "criterion": self.criterion.state_dict()}

