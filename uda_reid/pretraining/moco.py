"""MoCo v2 as LUPerson pre-trained re-ID backbones (METHODS.md §7).

A query encoder learns; a key encoder follows it by EMA; each query view's positive is the key view
of the same image, its negatives a queue of keys of earlier batches. BatchNorm would let a query
find its key through shared batch statistics, so, as MoCo's shuffle BN does across GPUs, both
encoders normalise over ``bn_groups`` chunks of the batch and the key batch is shuffled before its
encoder: a key never shares its statistics chunk with its own query.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..config import PretrainConfig
from ..losses.contrastive import info_nce
from ..memory.key_queue import KeyQueue
from ..models.batchnorm import convert_to_grouped_bn
from ..models.projection_encoder import ProjectionEncoder
from ..registry import Registry

PRETRAINERS: Registry[type["MoCo"]] = Registry("pre-training method", "pretrain.method")


@PRETRAINERS.register("moco")
class MoCo(nn.Module):
    """Query/key encoders, the global queue and InfoNCE; ``forward(views)`` returns the step's losses."""

    #: The views a batch must hold (``ContrastiveViews``): UP-ReID adds the original image.
    needs_original = False

    def __init__(self, arch: str, options: PretrainConfig) -> None:
        super().__init__()
        self.options = options
        encoder = ProjectionEncoder(arch, dim=options.dim, last_stride=options.last_stride)
        self.encoder_q = convert_to_grouped_bn(encoder, options.bn_groups)
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for parameter in self.encoder_k.parameters():
            parameter.requires_grad_(False)
        self.queue = KeyQueue(options.queue_size, options.dim)

    @property
    def compute_dtype(self) -> torch.dtype | None:
        return self.encoder_q.compute_dtype

    @compute_dtype.setter
    def compute_dtype(self, dtype: torch.dtype | None) -> None:
        self.encoder_q.compute_dtype = self.encoder_k.compute_dtype = dtype

    @torch.no_grad()
    def update_key_encoder(self) -> None:
        """key ← m·key + (1 − m)·query, parameter by parameter (the key encoder's BN statistics are its own)."""
        momentum = self.options.key_momentum
        for key, query in zip(self.encoder_k.parameters(), self.encoder_q.parameters()):
            key.mul_(momentum).add_(query.detach(), alpha=1.0 - momentum)

    @torch.no_grad()
    def encode_keys(self, images: torch.Tensor) -> torch.Tensor:
        """Key projections in the order of ``images``, computed on a shuffled batch (see the module doc)."""
        order = torch.randperm(len(images), device=images.device)
        keys = self.encoder_k(images[order])
        return keys[torch.argsort(order)]

    def forward(self, views: dict[str, torch.Tensor], gather=lambda keys: keys) -> dict[str, torch.Tensor]:
        """``{"loss": total, ...parts}`` of one step; enqueues the step's keys (``gather`` joins every
        process's keys under DDP, so the queues stay identical)."""
        query = self.encoder_q(views["query"])
        self.update_key_encoder()
        key = self.encode_keys(views["key"])
        loss = info_nce(query, key, self.queue.keys.clone(), self.options.temperature)
        self.queue.enqueue(gather(key))
        return {"loss": loss, "global_nce": loss.detach()}

    def backbone_state(self) -> dict[str, torch.Tensor]:
        """The query encoder's backbone with torchvision's key names: what fine-tuning starts from."""
        return {name: tensor.detach().cpu().clone() for name, tensor in self.encoder_q.backbone.state_dict().items()}
