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
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import PretrainConfig
from ..errors import ConfigError
from ..losses.contrastive import MMD_ESTIMATORS, consistency_loss, info_nce, multi_positive_info_nce
from ..memory.key_queue import KeyQueue
from ..models.projection_encoder import cut_patches, mirrored_patch
from .moco import PRETRAINERS, MoCo


@PRETRAINERS.register("upreid")
class UPReID(MoCo):
    needs_original = True

    def __init__(self, arch: str, options: PretrainConfig) -> None:
        super().__init__(arch, options)
        if options.mmd not in MMD_ESTIMATORS:
            raise ConfigError(f"pretrain.mmd: unknown estimator {options.mmd!r}; known: {', '.join(MMD_ESTIMATORS)}")
        self.patches = options.stripes * options.columns
        self.patch_queues = nn.ModuleList(KeyQueue(options.queue_size, options.dim) for _ in range(self.patches))

    def _patch_projections(self, images: torch.Tensor, encoder) -> torch.Tensor:
        """``N×3×H×W`` -> ``N×M×dim``: every patch through ``encoder`` as its own image."""
        patches = cut_patches(images, self.options.stripes, self.options.columns)
        return encoder(patches).reshape(len(images), self.patches, -1)

    def forward(self, views: dict[str, torch.Tensor], gather=lambda keys: keys) -> dict[str, torch.Tensor]:
        o = self.options
        query = self.encoder_q(views["query"])
        query_patches = self._patch_projections(views["query"], self.encoder_q)
        self.update_key_encoder()
        key = self.encode_keys(views["key"])
        with torch.no_grad():
            key_patches = self._patch_projections(views["key"], self.encode_keys)
            original_query = self.encoder_q(views["original"])
            original_key = self.encode_keys(views["original"])

        global_nce = info_nce(query, key, self.queue.keys.clone(), o.temperature)
        patch_nce = []
        for i in range(self.patches):
            positives = torch.stack([key_patches[:, mirrored_patch(i, o.columns)], key_patches[:, i]], dim=1)
            patch_nce.append(multi_positive_info_nce(query_patches[:, i], positives,
                                                     self.patch_queues[i].keys.clone(), o.patch_temperature))
        patch_nce = torch.stack(patch_nce).mean()
        consist = consistency_loss(query, key, original_query, original_key, o.mmd)
        loss = o.consistency_weight * consist + o.global_weight * global_nce + o.patch_weight * patch_nce

        self.queue.enqueue(gather(key))
        for i, patch_queue in enumerate(self.patch_queues):
            patch_queue.enqueue(gather(key_patches[:, i].contiguous()))
        return {"loss": loss, "global_nce": global_nce.detach(), "patch_nce": patch_nce.detach(),
                "consistency": consist.detach()}
