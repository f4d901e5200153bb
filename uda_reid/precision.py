"""Mixed precision: which dtype the backbone computes in, and whether gradients need scaling.

Only the backbone runs under autocast (``ReidModel.feature_map``): its convolutions are nearly all the
arithmetic. Everything after the feature map (pooling, neck, classifiers, memories, proxies, GDS
statistics, logits/τ, softmax, losses) stays float32, and so do the parameters and checkpoints.

``auto`` = fp16 with a gradient scaler on CUDA (the usual 2–3× of tensor cores), bf16 on CPUs with
native bf16 arithmetic (AVX-512 BF16 / AMX: ≈ 1.8× for a ResNet-50 step on the machine this was
written on), else fp32. bf16 has float32's exponent range, so it needs no scaler.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .config import PRECISIONS
from .errors import ConfigError
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (otherwise bf16 autocast is emulated and slower)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), [])
    except OSError:
        return False
    return torch.backends.mkldnn.is_available() and bool({"avx512_bf16", "amx_bf16"} & set(flags))


@dataclass(frozen=True)
class Precision:
    """A resolved precision: ``dtype`` None means float32 everywhere."""

    name: str  # fp32 | bf16 | fp16 (never auto)
    device_type: str

    @property
    def dtype(self) -> torch.dtype | None:
        return _DTYPES.get(self.name)

    @property
    def scales_gradients(self) -> bool:
        """fp16 gradients underflow without loss scaling; bf16 ones do not."""
        return self.name == "fp16"

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A scaler that is a no-op unless fp16 needs it (its state goes into ``last.pt``)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.scales_gradients)


def resolve_precision(name: str, device: torch.device, *, key: str = "precision") -> Precision:
    """``name`` (one of PRECISIONS) for a process on ``device``; ConfigError for what the device cannot do."""
    if name not in PRECISIONS:
        raise ConfigError(f"{key} must be one of {', '.join(PRECISIONS)}, got {name!r}")
    if name == "auto":
        if device.type == "cuda":
            name = "fp16"
        else:
            name = "bf16" if device.type == "cpu" and cpu_has_bf16() else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"{key} fp16 needs a GPU (float16 autocast on {device.type} is emulated and slower than fp32); "
            f"use bf16 (CPUs with AVX-512 BF16 or AMX) or fp32"
        )
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"{key} bf16: this GPU has no bf16 arithmetic; use fp16 or auto")
    return Precision(name, device.type)


def autocast(device_type: str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``device_type``; with None, float32 (autocast explicitly off, so an
    enclosing autocast cannot leak in)."""
    if dtype is None:
        return torch.autocast(device_type, enabled=False)
    return torch.autocast(device_type, dtype=dtype)
