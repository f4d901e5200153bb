"""PPLR (Cho et al., CVPR 2022): part-based pseudo-label refinement, optionally with camera proxies.

Each epoch: global and part features in one pass -> the loop clusters the global ones (outliers
sit the epoch out) -> the cross-agreement C (``N×P``) of every image's global and part neighbour
lists, reusing the clustering stage's global kNN -> classifiers re-initialised from the cluster
centroids of each feature. Losses: PGLR on the global classifier (labels refined by the part
predictions), AALS on the part classifiers (plain label smoothing for the first epochs), the
soft-margin batch-hard triplet on the global neck feature; with ``--camera-proxies pplr`` the
add-on adds the inter-camera loss over the global and part proxies (``EpochLabels.spaces``). Facts: docs/methods.md §4-5.

Under torchrun the features are extracted in shares and gathered; PGLR and AALS stay on each
process's slice (the classifiers' gradients are averaged by the loop); the triplet and camera
losses see the gathered global batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..clustering import ClusterResult, knn_search
from ..clustering.agreement import cross_agreement
from ..models.part_features import extract_part_features
from ..config import AT_LEAST_ONE, NON_NEGATIVE, PROBABILITY, setting
from ..losses import batch_hard_triplet_loss
from ..losses.pplr import part_identity_loss, pglr_loss, pglr_targets
from ..models.part_model import PartReidModel, part_model_to_plain
from .base import METHODS, AdaptContext, EpochLabels, Method, StepOutput


@dataclass
class PplrOptions:
    num_parts: int = setting(3, limit=AT_LEAST_ONE)
    agreement_k: int = setting(20, limit=AT_LEAST_ONE, help="neighbours compared by the cross-agreement score (self excluded)")
    beta: float = setting(0.5, limit=PROBABILITY, help="PGLR: weight of the pseudo-label against the part predictions")
    aals_warmup_epochs: int = setting(5, limit=NON_NEGATIVE, help="plain label smoothing for the parts before AALS")
    warmup_epsilon: float = setting(0.1, limit=PROBABILITY)
    triplet_margin: float = setting(0.0, limit=NON_NEGATIVE, help="0: soft margin")


@METHODS.register("pplr")
class PPLR(Method):
    Options = PplrOptions

    def __init__(self, config) -> None:
        super().__init__(config)
        self.part_features: torch.Tensor | None = None  # P×N×C of this epoch
        self.agreement: torch.Tensor | None = None  # N×P on the device
        self._model: PartReidModel | None = None  # holds this epoch's classifiers

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return PartReidModel.from_reid_model(model, num_parts=self.options.num_parts)

    def target_features(self, ctx: AdaptContext) -> torch.Tensor:
        dist = ctx.dist
        share = ctx.target_samples[dist.shard(len(ctx.target_samples))] if dist.is_distributed else ctx.target_samples
        global_features, self.part_features = extract_part_features(
            _part_model(ctx.unwrapped_model), share, self.config.data, device=ctx.device,
            progress=ctx.progress, desc="global and part features",
        )
        if dist.is_distributed:  # every process's share, gathered in sample order (parts: along N of P×N×C)
            self.part_features = dist.gather_rows(self.part_features.transpose(0, 1).contiguous()).transpose(0, 1).contiguous()
            global_features = dist.gather_rows(global_features)
        return global_features

    def on_clusters(self, result: ClusterResult, features: torch.Tensor, ctx: AdaptContext) -> EpochLabels:
        k = self.options.agreement_k
        neighbors = result.neighbors
        if neighbors is None or neighbors.indices.shape[1] < k + 1:  # K-means, or k1 <= k
            neighbors = knn_search(features, k + 1, knn=self.config.clustering.knn, device=ctx.device)
        agreement = cross_agreement(neighbors.indices, self.part_features, k, knn=self.config.clustering.knn,
                                    device=ctx.device)
        self.agreement = torch.from_numpy(agreement).to(ctx.device)
        labels = result.labels
        self._model = _part_model(ctx.unwrapped_model)
        self._model.reset_classifiers_from_clusters(features, self.part_features, labels)
        figures = {
            "unclustered": int((labels < 0).sum()),
            "agreement_mean": round(float(agreement.mean()), 4),
            **{f"agreement_part{p}": round(float(agreement[:, p].mean()), 4) for p in range(agreement.shape[1])},
        }
        # Add-ons (camera proxies) act on the global feature and on every part.
        return EpochLabels(labels, figures, scores={"agreement": agreement}, spaces=[features, *self.part_features])

    def head_parameters(self) -> list[nn.Parameter]:
        return [] if self._model is None else self._model.classifier_parameters()

    def training_step(self, ctx: AdaptContext, batch: dict[str, dict[str, torch.Tensor]]) -> StepOutput:
        o = self.options
        target = batch["target"]
        images = target["image"].to(ctx.device, non_blocking=True)
        labels = target["label"].to(ctx.device)
        agreement = self.agreement[target["index"].to(ctx.device)]
        out = ctx.model(images)
        targets = pglr_targets(labels, out.part_logits, agreement, beta=o.beta)
        gather = ctx.dist.gather_batch  # the global batch (the identity in one process)
        batch_labels = gather(labels)
        losses = {
            "loss_pglr": pglr_loss(out.logits, targets),
            "loss_aals": part_identity_loss(out.part_logits, labels, agreement,
                                            warmup=ctx.epoch < o.aals_warmup_epochs, epsilon=o.warmup_epsilon),
            "loss_triplet": batch_hard_triplet_loss(gather(out.features), batch_labels, margin=o.triplet_margin),
        }
        return StepOutput(losses, out.features, batch_spaces=[out.features, *out.part_features])

    def export_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return part_model_to_plain(model.state_dict(), drop_classifier=True)


def _part_model(model: nn.Module) -> PartReidModel:
    if not isinstance(model, PartReidModel):
        raise TypeError(f"PPLR trains a PartReidModel (prepare_model), got {type(model).__name__}")
    return model
