"""Self-supervised pre-training methods: the second kind of plug-in the training loop drives.

A pre-training method is a :class:`~uda_reid.methods.base.Method` (the same hooks, the same loop:
resume, checkpoints, DDP, logging exist once, in ``engine/loop.py``) whose defaults differ:

- no labels: every image is its own group, drawn once per pass (the ``every_image`` sampler), so an
  epoch is a seeded permutation of the images cut into global batches;
- its own network: an encoder with a projection head (``build_model``), its own views per image
  (``train_transform``), its settings in the ``pretrain`` section (epochs, batch size, BN groups);
- its "model" for evaluation and export is the bare backbone: the frozen backbone's pooled features
  are evaluated on ``eval_datasets``, ``backbone.pth`` is written after every epoch (what
  ``--init moco:PATH`` reads) and its checkpoints are marked ``stage: pretrain``.

``PRETRAINERS`` maps ``pretrain.method`` to the class; a new one is one file in this package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..clustering import ClusterResult
from ..config import ModelConfig
from ..errors import ConfigError
from ..methods.base import AdaptContext, EpochLabels, Method
from ..models.checkpoint_import import PRETRAIN_STAGE
from ..models.projection_encoder import ProjectionEncoder
from ..registry import Registry

PRETRAINERS: Registry[type["PretrainingMethod"]] = Registry("pre-training method", "pretrain.method")

#: The file every epoch writes: the query backbone with torchvision's key names.
BACKBONE_FILE = "backbone.pth"


class PretrainingMethod(Method):
    """Defaults of a pre-training method; a subclass gives ``training_step`` (and its state)."""

    sampler = "every_image"
    settings_section = "pretrain"
    clusters = False
    evaluates_initial_model = False
    accepts_add_ons = False
    checkpoint_stage = PRETRAIN_STAGE
    #: Whether a batch also holds the original image (only resized and normalised) as ``"original"``.
    needs_original = False

    @property
    def batch_size(self) -> int:
        return self.config.pretrain.batch_size

    @property
    def num_instances(self) -> int:
        return 1  # one pass over the images is N / batch_size batches

    def train_specs(self) -> list[str]:
        if not self.config.pretrain.datasets:
            raise ConfigError("pretrain.datasets is empty: give --images DIR or --dataset NAME (repeatable)")
        return list(self.config.pretrain.datasets)

    def evaluation_spec(self) -> str | None:
        return self.config.eval_datasets[0] if self.config.eval_datasets else None

    def check_samples(self, samples: list) -> None:
        if len(samples) < self.batch_size:
            raise ConfigError(f"{len(samples)} images are fewer than one batch (pretrain.batch_size {self.batch_size})")

    def build_model(self, model_config: ModelConfig, num_classes: int, compute_dtype: torch.dtype | None):
        options = self.config.pretrain
        data = self.config.data
        encoder = ProjectionEncoder(model_config.arch, dim=options.dim, last_stride=options.last_stride,
                                    compute_dtype=compute_dtype, image_size=(data.height, data.width))
        return encoder, "random (pre-training learns the backbone from scratch)"

    def train_transform(self) -> Any:
        from ..data.transforms import ContrastiveViews, build_pretrain_transform, build_test_transform

        data = self.config.data
        return ContrastiveViews(build_pretrain_transform(data, self.config.pretrain),
                                build_test_transform(data) if self.needs_original else None)

    def on_clusters(self, result: ClusterResult, features: torch.Tensor | None, ctx: AdaptContext) -> EpochLabels:
        return EpochLabels(np.arange(len(ctx.target_samples), dtype=np.int64))

    def export_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The trained encoder's backbone with torchvision's key names: what fine-tuning starts from."""
        return {name: tensor.detach().cpu().clone() for name, tensor in model.backbone.state_dict().items()}

    def evaluation_model(self, network: nn.Module) -> nn.Module:
        """A re-ID model around the frozen backbone, as ``evaluate --weights moco:backbone.pth`` builds it."""
        from ..models.factory import build_model, fitted_model_config

        data = self.config.data
        model_config = fitted_model_config(ModelConfig(), arch=self.config.model.arch, extra_bn=True)
        model, _ = build_model(model_config, compute_dtype=network.compute_dtype, image_size=(data.height, data.width))
        model.backbone.load_state_dict(network.backbone.state_dict())
        reference = next(network.parameters())
        return model.to(reference.device)

    def artifacts(self, network: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
        return {BACKBONE_FILE: self.export_state_dict(network)}

    def summary(self, run_dir: Any) -> dict[str, Any]:
        backbone = Path(run_dir) / BACKBONE_FILE
        return {"arch": self.config.model.arch, "datasets": list(self.config.pretrain.datasets),
                "backbone": str(backbone), "init": f"moco:{backbone}"}
