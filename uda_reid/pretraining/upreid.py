"""UP-ReID (Yang et al., CVPR 2022): MoCo plus a consistency loss and an intrinsic (patch) contrastive loss.

- L_consist: the in-batch similarities of the augmented views, A(q, k) = q·kᵀ, are pulled towards those
  of the original images through both encoders, A(q_r, k_r), by MMD (``pretrain.mmd``: the paper names
  no kernel; the default is a multi-bandwidth Gaussian kernel, which matches whole distributions, the
  linear kernel only their means). No gradient reaches the original images' branch.
- L_inc = λg·L_g + λp·mean_i L_pi: L_g is MoCo's InfoNCE; each view is cut into M = stripes × columns
  patches (after augmentation), every patch encoded as its own image; patch i's positives are the same
  patch and the mirrored patch (same stripe, other half) of the key view, both in the numerator, its
  negatives a queue of patch-i keys (one queue per position).

The paper's "m = 0.9" is read as SGD momentum (the recipe keeps MoCo's key EMA 0.999, as LUPerson's
pre-training that UP-ReID builds on); ``--set pretrain.key_momentum=0.9`` is the other reading.
Each logged loss is the term as it enters the total (weights applied).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ..losses.contrastive import consistency_loss, info_nce, multi_positive_info_nce
from ..memory.key_queue import KeyQueue
from ..methods.base import AdaptContext, StepOutput
from ..models.projection_encoder import cut_patches, mirrored_patch
from .base import PRETRAINERS
from .moco import MoCo, MomentumKeys


class MomentumKeysWithPatches(MomentumKeys):
    """MoCo's key encoder and queue, plus one queue of patch keys per patch position."""

    def __init__(self, query_encoder: nn.Module, queue_size: int, dim: int, patches: int) -> None:
        super().__init__(query_encoder, queue_size, dim)
        self.patch_queues = nn.ModuleList(KeyQueue(queue_size, dim) for _ in range(patches))


@PRETRAINERS.register("upreid")
class UPReID(MoCo):
    """UP-ReID: MoCo's InfoNCE, patch InfoNCE with mirrored positives, and MMD consistency with the originals."""

    needs_original = True

    def gradient_forwards_per_image(self) -> float:
        """The query, then its patches (together the image's area) each through the network."""
        return 2.0

    @property
    def patches(self) -> int:
        return self.config.pretrain.stripes * self.config.pretrain.columns

    def _build_keys(self, query_encoder: nn.Module) -> nn.Module:
        o = self.config.pretrain
        return MomentumKeysWithPatches(query_encoder, o.queue_size, o.dim, self.patches)

    def patch_projections(self, images: torch.Tensor, encoder: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``N×3×H×W`` -> ``N×M×dim``: every patch through ``encoder`` as its own image."""
        o = self.config.pretrain
        patches = cut_patches(images, o.stripes, o.columns)
        return encoder(patches).reshape(len(images), self.patches, -1)

    def training_step(self, ctx: AdaptContext, batch: dict[str, dict[str, Any]]) -> StepOutput:
        o = self.config.pretrain
        views = self.views(batch, ctx)
        query = ctx.model(views["query"])
        query_patches = self.patch_projections(views["query"], ctx.model)
        self.update_key_encoder(ctx.unwrapped_model)
        key = self.encode_keys(views["key"])
        with torch.no_grad():
            key_patches = self.patch_projections(views["key"], self.encode_keys)
            original_query = ctx.unwrapped_model(views["original"])
            original_key = self.encode_keys(views["original"])

        global_nce = info_nce(query, key, self.keys.queue.keys.clone(), o.temperature)
        patch_nce = []
        for i in range(self.patches):
            positives = torch.stack([key_patches[:, mirrored_patch(i, o.columns)], key_patches[:, i]], dim=1)
            patch_nce.append(multi_positive_info_nce(query_patches[:, i], positives,
                                                     self.keys.patch_queues[i].keys.clone(), o.patch_temperature))
        patch_nce = torch.stack(patch_nce).mean()
        consistency = consistency_loss(query, key, original_query, original_key, o.mmd)

        self.keys.queue.enqueue(ctx.dist.gather_batch(key))
        for i, patch_queue in enumerate(self.keys.patch_queues):
            patch_queue.enqueue(ctx.dist.gather_batch(key_patches[:, i].contiguous()))
        losses = {"loss_consistency": o.consistency_weight * consistency, "loss_global_nce": o.global_weight * global_nce,
                  "loss_patch_nce": o.patch_weight * patch_nce}
        return StepOutput(losses, query)
