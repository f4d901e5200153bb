"""Optimiser (parameter groups, gradient clipping), the learning-rate schedules and the weight-decay
schedule, all stepped once per epoch."""

from __future__ import annotations

import bisect
import math

import torch
from torch import nn

from ..config import OptimConfig
from ..errors import ConfigError


def parameter_groups(model: nn.Module, config: OptimConfig) -> list[dict]:
    """The trainable parameters in groups by their lr and weight decay: biases at ``bias_lr_factor`` × lr
    (TransReID), and without ``decay_bias_and_norm`` biases and one-dimensional weights without decay
    (DINO). Each group remembers its ``base_weight_decay`` for the weight-decay schedule."""
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        bias = name.endswith(".bias") or name == "bias"
        lr = config.lr * (config.bias_lr_factor if bias else 1.0)
        decay = 0.0 if not config.decay_bias_and_norm and (bias or parameter.dim() == 1) else config.weight_decay
        groups.setdefault((lr, decay), []).append(parameter)
    return [{"params": params, "lr": lr, "weight_decay": decay, "base_weight_decay": decay}
            for (lr, decay), params in groups.items()]


def build_optimizer(model: nn.Module, config: OptimConfig, *, fused: bool = False) -> torch.optim.Optimizer:
    """The optimiser ``config`` names over :func:`parameter_groups`; ``fused``: torch's one-kernel step
    (``speed.fused_optimizer``; the same update within float rounding)."""
    groups = parameter_groups(model, config)
    kernel = {"fused": True} if fused else {}
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay, **kernel)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay, **kernel)
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, nesterov=config.nesterov,
            **kernel,
        )
    raise ConfigError(f"optim.optimizer: unknown optimizer {config.optimizer!r}; known: adam, adamw, sgd")


def set_weight_decay(optimizer: torch.optim.Optimizer, config: OptimConfig, epoch: int, epochs: int) -> None:
    """With ``final_weight_decay``: each group's decay at ``epoch`` on half a cosine from its base value to
    the final one (scaled alike; groups without decay keep none). A function of the epoch, so a resumed run
    sets the same values."""
    if config.final_weight_decay is None or not config.weight_decay:
        return
    progress = epoch / max(epochs, 1)
    value = config.final_weight_decay + 0.5 * (config.weight_decay - config.final_weight_decay) * (
        1 + math.cos(math.pi * progress))
    for group in optimizer.param_groups:
        group["weight_decay"] = group.get("base_weight_decay", config.weight_decay) * value / config.weight_decay


def clip_gradients(parameters, max_norm: float) -> None:
    """Each parameter's gradient scaled down to norm ``max_norm`` when larger (DINO's clipping)."""
    for parameter in parameters:
        if parameter.grad is not None:
            norm = parameter.grad.detach().norm(2)
            parameter.grad.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))


def lr_factor(epoch: int, config: OptimConfig, epochs: int | None = None) -> float:
    """Multiplier of the base lr at ``epoch``: ×gamma per milestone (``step``), times a linear warm-up
    from ``warmup_factor``; or (``cosine``) the warm-up alone until it ends, then
    m + (1 − m)·½(1 + cos(π·epoch/epochs)) with m = ``min_lr_factor`` (MoCo's per-epoch decay; TransReID's
    timm scheduler, which counts the cosine from epoch 0)."""
    warming = epoch < config.warmup_epochs
    alpha = epoch / config.warmup_epochs if warming else 1.0
    if config.schedule == "cosine":
        if not epochs:
            raise ConfigError("optim.schedule: cosine needs the run's number of epochs")
        if warming:  # timm's CosineLRScheduler (warmup_prefix off): the warm-up replaces the cosine
            return config.warmup_factor * (1 - alpha) + alpha
        floor = config.min_lr_factor
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    if config.schedule == "step":
        decay = config.gamma ** bisect.bisect_right(sorted(config.milestones), epoch)
    else:
        raise ConfigError(f"optim.schedule: unknown schedule {config.schedule!r}; known: step, cosine")
    if warming:  # BoT's WarmupMultiStepLR: the warm-up multiplies the steps
        return (config.warmup_factor * (1 - alpha) + alpha) * decay
    return decay


def build_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig,
                    epochs: int | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(epoch, config, epochs))
