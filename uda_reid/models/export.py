"""A trained model as a file other programs run: images in, L2-normalised features out (``udareid export``).

The exported network takes a float batch ``N×3×H×W``, RGB, values in [0, 1], already resized to the
run's ``H×W``, and applies the run's mean/std normalisation itself, so a deployment only has to
resize and scale. A JSON file next to the model states exactly that. Formats:

- ``torchscript``: ``torch.jit.trace``; loads with ``torch.jit.load`` (also from C++). PyTorch has
  deprecated TorchScript, hence
- ``pt2``: a ``torch.export`` program; loads with ``torch.export.load(path).module()``;
- ``onnx``: through ``torch.onnx`` (needs the ``onnx`` extra); runs in onnxruntime, TensorRT, OpenVINO.

Every format keeps the batch size free.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from ..config import NORMALIZATIONS, DataConfig
from ..errors import ConfigError
from ..fileio import atomic_path, atomic_write_text

EXPORT_FORMATS = ("torchscript", "pt2", "onnx")


class FeatureExtractor(nn.Module):
    """``model`` in eval mode behind the run's normalisation: [0, 1] RGB images -> its features."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.model = model.eval()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std)


def input_description(data_config: DataConfig, feature_dim: int) -> dict:
    """What the exported file expects and returns (written next to it as ``<file>.json``)."""
    mean, std = NORMALIZATIONS[data_config.normalization]
    return {
        "input": {
            "name": "images", "shape": ["N", 3, data_config.height, data_config.width], "dtype": "float32",
            "colour": "RGB", "range": [0.0, 1.0],
            "resize": f"to {data_config.height}x{data_config.width} (height x width), "
                      f"{data_config.interpolation} interpolation, before the model",
        },
        "normalization": {"name": data_config.normalization, "mean": list(mean), "std": list(std),
                          "applied": "inside the model: (images - mean) / std"},
        "output": {"name": "features", "shape": ["N", feature_dim], "l2_normalised": True,
                   "distance": "squared Euclidean (2 - 2 cosine); smaller is more alike"},
    }


def export_model(model: nn.Module, data_config: DataConfig, fmt: str, out: str | Path, *, feature_dim: int,
                 about: dict | None = None) -> tuple[Path, Path]:
    """Write ``model`` (CPU, float32) as ``fmt`` to ``out`` and its description to ``<out>.json``, atomically."""
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"--format {fmt!r}: expected one of {', '.join(EXPORT_FORMATS)}")
    out = Path(out)
    if getattr(model, "compute_dtype", None) is not None:
        raise ValueError("export_model needs a model built in float32 (compute_dtype None): the exported graph "
                         "is float32 throughout")
    model = model.cpu().float()
    wrapper = FeatureExtractor(model, *NORMALIZATIONS[data_config.normalization]).eval()
    example = torch.rand(2, 3, data_config.height, data_config.width)
    with torch.no_grad(), atomic_path(out) as tmp:
        if fmt == "torchscript":
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*torch.jit.* is deprecated")
                torch.jit.save(torch.jit.trace(wrapper, example), str(tmp))
        elif fmt == "pt2":
            program = torch.export.export(wrapper, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
            with open(tmp, "wb") as handle:  # a handle: torch.export wants a .pt2 name, the temporary has none
                torch.export.save(program, handle)
        else:
            _export_onnx(wrapper, example, tmp)
    description = {"format": fmt, **(about or {}), **input_description(data_config, feature_dim)}
    sidecar = out.with_name(out.name + ".json")
    atomic_write_text(sidecar, json.dumps(description, indent=1) + "\n")
    return out, sidecar


def _export_onnx(wrapper: nn.Module, example: torch.Tensor, path: Path) -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ConfigError(
            f"--format onnx needs the onnx packages ({error.name} is missing): pip install 'uda_reid[onnx]'"
        ) from None
    torch.onnx.export(wrapper, (example,), str(path), input_names=["images"], output_names=["features"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False, verbose=False)
