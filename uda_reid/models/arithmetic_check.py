"""Whether this machine computes a backbone's layers correctly in reduced precision, at the run's shapes.

Reduced-precision kernels can be wrong for some shapes on some hardware, and a run would then train on
wrong numbers or end in NaN with advice that does not help. Seen here: torch 2.14.1's oneDNN (3.12) AMX
bf16 kernels on a Sapphire Rapids CPU return NaN or unrelated values for 3×3 stride-2 convolutions on
4×2 maps (forward) and on 2×1 maps (weight gradients) — the maps a ResNet reaches from 32×16 images —
while the same layers on larger maps, and the AVX-512 BF16 kernels (``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16``),
are right except for the weight gradient on 2×1 maps. The fault depends on the layer's shape (channels, kernel, stride, input size, batch), not on
its weights, so before any work every distinct convolution and linear layer of the backbone is run once
at the shape the run gives it — forward, and backward for training — on random inputs, in float32 and
in the run's precision, and the two must agree as closely as bf16's 8 significant bits allow (relative
error ≈ 0.003 when the kernels are right; the faults give NaN, inf or errors near 1). Whole-network
comparisons would not do: a randomly initialised deep network amplifies rounding until even correct
kernels disagree. The batch is capped at :data:`MAX_BATCH` images, which keeps the check to a few
seconds at 256×128 on two cores (the faults above show from one image on).

Only CPUs are checked: CUDA's bf16/fp16 kernels have no such known fault.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..precision import Precision

#: Largest relative error (‖reduced − float32‖ / ‖float32‖) of a layer's output and gradients: correct
#: bf16 kernels stay below 0.02 (0.003 typical, measured over ResNet layers from 2×1 to 256×128 maps).
TOLERANCE = 0.05
MAX_BATCH = 16


@dataclass(frozen=True)
class _Layer:
    name: str
    module: nn.Module
    input_shape: tuple[int, ...]  # without the batch dimension

    def describe(self) -> str:
        m = self.module
        if isinstance(m, nn.Conv2d):
            kernel = "×".join(map(str, m.kernel_size))
            return (f"{self.name} ({kernel} convolution {m.in_channels}→{m.out_channels}, stride "
                    f"{m.stride[0]}, on {'×'.join(map(str, self.input_shape[1:]))} maps)")
        return f"{self.name} (linear {m.in_features}→{m.out_features})"

    def function(self) -> Callable[..., torch.Tensor]:
        m = self.module
        if isinstance(m, nn.Conv2d):
            return lambda x, w, b: F.conv2d(x, w, b, m.stride, m.padding, m.dilation, m.groups)
        return F.linear


def _signature(module: nn.Module, shape: tuple[int, ...]) -> tuple:
    if isinstance(module, nn.Conv2d):
        return ("conv", module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                module.dilation, module.groups, module.bias is not None, shape)
    return ("linear", module.in_features, module.out_features, module.bias is not None, shape)


def distinct_layers(backbone: nn.Module, height: int, width: int) -> list[_Layer]:
    """The backbone's convolutions and linear layers with the input shape each gets from ``height``×``width``
    images, one per distinct (layer kind, size, input shape). One image passes through, without gradients,
    in eval mode (BatchNorm statistics untouched); the backbone's mode is restored."""
    seen: dict[tuple, _Layer] = {}
    names = {module: name for name, module in backbone.named_modules()}

    def record(module: nn.Module, args: tuple) -> None:
        shape = tuple(args[0].shape[1:])
        seen.setdefault(_signature(module, shape), _Layer(names[module], module, shape))

    hooks = [m.register_forward_pre_hook(record) for m in backbone.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = backbone.training
    device = next(backbone.parameters()).device
    try:
        with torch.no_grad():
            backbone.eval()(torch.zeros(1, 3, height, width, device=device))
    finally:
        backbone.train(was_training)
        for hook in hooks:
            hook.remove()
    return list(seen.values())


def _relative_error(value: torch.Tensor, exact: torch.Tensor) -> float:
    value, exact = value.double(), exact.double()
    return float((value - exact).norm() / exact.norm().clamp_min(1e-30))


def _layer_fault(layer: _Layer, dtype: torch.dtype, batch: int, backward: bool,
                 generator: torch.Generator) -> str | None:
    function = layer.function()
    weight = layer.module.weight.detach().float()
    bias = None if layer.module.bias is None else layer.module.bias.detach().float()
    x = torch.randn(batch, *layer.input_shape, generator=generator).to(weight.device)
    results = []
    for cast in (torch.float32, dtype):
        inputs = [x.to(cast).requires_grad_(backward), weight.to(cast).requires_grad_(backward)]
        out = function(*inputs, None if bias is None else bias.to(cast))
        grads: tuple[torch.Tensor, ...] = ()
        if backward:
            if not results:
                upstream = torch.randn(out.shape, generator=generator).to(out.device)
            grads = torch.autograd.grad(out, inputs, upstream.to(cast))
        results.append((out.detach(), *grads))
    for what, exact, value in zip(("output", "input gradient", "weight gradient"), results[0], results[1]):
        if not torch.isfinite(value).all():
            return f"non-finite {what}"
        error = _relative_error(value, exact)
        if not error <= TOLERANCE:
            return f"{what} off by {error:.3g} relative to float32"
    return None


def reduced_precision_fault(backbone: nn.Module, dtype: torch.dtype | None, height: int, width: int,
                            device: torch.device | str, *, batch: int, backward: bool) -> str | None:
    """What this machine computes wrongly when ``backbone`` runs in ``dtype`` on ``height``×``width``
    images in batches of ``batch`` (capped at MAX_BATCH), forward and, with ``backward``, backward
    (None: nothing, or nothing to check)."""
    if dtype is None or torch.device(device).type != "cpu":
        return None
    generator = torch.Generator().manual_seed(0)
    for layer in distinct_layers(backbone, height, width):
        fault = _layer_fault(layer, dtype, min(batch, MAX_BATCH), backward, generator)
        if fault is not None:
            return f"{layer.describe()}: {fault}"
    return None


def checked_precision(precision: Precision, requested: str, backbone: nn.Module, height: int, width: int, *,
                      batch: int, backward: bool, key: str = "precision") -> tuple[Precision, str | None]:
    """``precision`` if this machine computes ``backbone`` right in it at this size, else: for a precision
    the user chose, a ConfigError naming the layer; for ``auto``, fp32 and a note saying why."""
    fault = reduced_precision_fault(backbone, precision.dtype, height, width, precision.device_type,
                                    batch=batch, backward=backward)
    if fault is None:
        return precision, None
    where = f"{precision.name} at {height}×{width} images: {fault}"
    if requested == "auto":
        return Precision("fp32", precision.device_type), f"{key} auto: fp32, as this CPU computes {where}"
    raise ConfigError(f"{key} {precision.name}: this CPU computes {where}; use --precision fp32 (or auto), "
                      f"or larger images (data.height, data.width)")
