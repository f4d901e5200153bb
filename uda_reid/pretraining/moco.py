"""MoCo v2 as LUPerson pre-trained re-ID backbones (docs/methods.md §7).

The trained network is the query encoder; a key encoder follows it by EMA; each query view's
positive is the key view of the same image, its negatives a queue of keys of earlier batches.
BatchNorm would let a query find its key through shared batch statistics, so, as MoCo's shuffle BN
does across GPUs, both encoders normalise over ``pretrain.bn_groups`` chunks of the batch (the loop
converts the network, the key encoder is its copy) and the key batch is shuffled before its encoder:
a key never shares its statistics chunk with its own query.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..losses.contrastive import info_nce
from ..memory.key_queue import KeyQueue
from ..methods.base import AdaptContext, StepOutput
from .base import PRETRAINERS, PretrainingMethod


class MomentumKeys(nn.Module):
    """The key encoder (an EMA copy of the query encoder, no gradient) and the global key queue."""

    def __init__(self, query_encoder: nn.Module, queue_size: int, dim: int) -> None:
        super().__init__()
        self.encoder_k = copy.deepcopy(query_encoder)
        for parameter in self.encoder_k.parameters():
            parameter.requires_grad_(False)
        self.queue = KeyQueue(queue_size, dim)


@PRETRAINERS.register("moco")
class MoCo(PretrainingMethod):
    """MoCo v2: InfoNCE of each query against its key and a queue of earlier keys."""

    weight_copies = 1  # the momentum key encoder (its forward has no gradient)

    def setup(self, ctx: AdaptContext, state: dict[str, Any] | None = None) -> None:
        self.keys = self._build_keys(ctx.unwrapped_model).to(ctx.device).train()  # shuffle BN: batch statistics
        if state is not None:
            self.keys.load_state_dict(state)

    def _build_keys(self, query_encoder: nn.Module) -> nn.Module:
        return MomentumKeys(query_encoder, self.config.pretrain.queue_size, self.config.pretrain.dim)

    @torch.no_grad()
    def update_key_encoder(self, query_encoder: nn.Module) -> None:
        """key ← m·key + (1 − m)·query, parameter by parameter (the key encoder's BN statistics are its own)."""
        momentum = self.config.pretrain.key_momentum
        for key, query in zip(self.keys.encoder_k.parameters(), query_encoder.parameters()):
            key.mul_(momentum).add_(query.detach(), alpha=1.0 - momentum)

    @torch.no_grad()
    def encode_keys(self, images: torch.Tensor) -> torch.Tensor:
        """Key projections in the order of ``images``, computed on a shuffled batch (see the module doc)."""
        order = torch.randperm(len(images), device=images.device)
        keys = self.keys.encoder_k(images[order])
        return keys[torch.argsort(order)]

    def views(self, batch: dict[str, dict[str, Any]], ctx: AdaptContext) -> dict[str, torch.Tensor]:
        return {name: images.to(ctx.device, non_blocking=True) for name, images in batch["target"]["image"].items()}

    def training_step(self, ctx: AdaptContext, batch: dict[str, dict[str, Any]]) -> StepOutput:
        """InfoNCE on the queue as it was; then the step's keys (every rank's) are enqueued."""
        views = self.views(batch, ctx)
        query = ctx.model(views["query"])
        self.update_key_encoder(ctx.unwrapped_model)
        key = self.encode_keys(views["key"])
        loss = info_nce(query, key, self.keys.queue.keys.clone(), self.config.pretrain.temperature)
        self.keys.queue.enqueue(ctx.dist.gather_batch(key))
        return StepOutput({"loss_global_nce": loss}, query)

    def after_epoch(self, ctx: AdaptContext) -> list[str]:
        """Under torchrun: the key encoder's BN statistics as rank 0's (each rank normalised its own slice),
        and a check that the query weights and the queues are the same on every rank."""
        dist = ctx.dist
        dist.sync_buffers_from_main(self.keys)
        if not dist.is_distributed:
            return []
        dist.check_identical("query encoder weights and key queues", *ctx.unwrapped_model.parameters(),
                             *[buffer for name, buffer in self.keys.named_buffers() if "queue" in name],
                             cause="The gradient exchange or the key gathering is broken: please report it")
        return [f"epoch {ctx.epoch + 1}: weights and queue identical on all {dist.world_size} processes"]

    def state_dict(self) -> dict[str, Any]:
        return self.keys.state_dict()
