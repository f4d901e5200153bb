"""The ``speed`` settings: how the device runs the network, not what it computes.

- ``channels_last``: convolutional backbones in NHWC layout. cuDNN's tensor-core convolutions work in
  NHWC; an NCHW network in bf16 / fp16 pays layout transposes around every convolution, which is
  where much of the mixed-precision gain goes.
- ``cudnn_benchmark``: the training images have one size, so timing cuDNN's algorithms once pays.
- ``fused_optimizer``: torch's fused Adam / AdamW / SGD step (one kernel instead of several per tensor).
- ``compile``: ``nn.Module.compile`` in place, so the state dict and the checkpoints keep their keys.

``auto`` is on for a CUDA device, off on the CPU (where NHWC and fused steps gain little and the
reference figures were measured without them).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import SpeedConfig


def wanted(setting: str, device: torch.device) -> bool:
    """An ``auto`` / ``on`` / ``off`` switch resolved for ``device``."""
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def is_convolutional(model: nn.Module) -> bool:
    return any(isinstance(module, nn.Conv2d) for module in model.modules())


def apply_speed(model: nn.Module, speed: SpeedConfig, device: torch.device) -> list[str]:
    """Lay out and compile ``model`` (already on ``device``) as ``speed`` says; returns what was switched
    on, for the run's log."""
    done = []
    if wanted(speed.channels_last, device) and is_convolutional(model):
        model.to(memory_format=torch.channels_last)
        done.append("channels-last")
    if device.type == "cuda" and wanted(speed.cudnn_benchmark, device):
        torch.backends.cudnn.benchmark = True
        done.append("cudnn.benchmark")
    if speed.compile:
        model.compile()
        done.append("torch.compile")
    return done
