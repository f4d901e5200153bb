"""Optimiser and the warm-up + step learning-rate schedule (stepped once per epoch)."""

from __future__ import annotations

import bisect
import math

import torch
from torch import nn

from ..config import OptimConfig
from ..errors import ConfigError


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, nesterov=config.nesterov
        )
    raise ConfigError(f"optim.optimizer: unknown optimizer {config.optimizer!r}; known: adam, sgd")


def lr_factor(epoch: int, config: OptimConfig, epochs: int | None = None) -> float:
    """Multiplier of the base lr at ``epoch``: linear warm-up from ``warmup_factor``, then ×gamma per
    milestone (``step``) or ½(1 + cos(π·epoch/epochs)) (``cosine``, MoCo's per-epoch decay)."""
    if config.schedule == "cosine":
        if not epochs:
            raise ConfigError("optim.schedule: cosine needs the run's number of epochs")
        decay = 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    elif config.schedule == "step":
        decay = config.gamma ** bisect.bisect_right(sorted(config.milestones), epoch)
    else:
        raise ConfigError(f"optim.schedule: unknown schedule {config.schedule!r}; known: step, cosine")
    if epoch < config.warmup_epochs:
        alpha = epoch / config.warmup_epochs
        return (config.warmup_factor * (1 - alpha) + alpha) * decay
    return decay


def build_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig,
                    epochs: int | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(epoch, config, epochs))
