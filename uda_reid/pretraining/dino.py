"""DINO (Caron et al., ICCV 2021) as TransReID-SSL pre-trained its LUPerson ViTs (docs/methods.md §7).

A student (backbone + head) sees every crop of an image: two global crops at the run's image size and
``pretrain.local_crops`` small ones at half of it (``MultiCropViews``); a teacher, the student's EMA
(momentum from ``key_momentum`` rising to 1 on a cosine over the run's steps), sees the global crops.
The teacher's output is centred (an EMA, ``center_momentum``, of its batch mean over every process)
and sharpened (``teacher_temperature``); the loss is the cross-entropy of every student crop against
the teacher's output for every *other* global crop, averaged over the pairs (``loss_dino``). The head
is an MLP (hidden ``head_hidden``, two GELUs) to an L2-normalised bottleneck and a weight-normalised
last layer of ``pretrain.dim`` outputs whose norm stays 1; the last layer does not train in the first
``freeze_last_layer`` epochs. ``backbone.pth`` is the teacher's backbone, as TransReID-SSL releases it.

Works on any backbone: a transformer's feature is its class token, a ResNet's its mean-pooled map.
Not in this file: TransReID-SSL's CFS filter of LUPerson (a ranking of the pre-training images by how
far fine-tuning moves them; neither its code nor its formula is public) — pass the images to use.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import PATCH, ModelConfig
from ..errors import ConfigError
from ..methods.base import AdaptContext, StepOutput
from ..models.backbones import build_backbone, is_transformer
from ..precision import autocast
from .base import PRETRAINERS, PretrainingMethod


class DinoHead(nn.Module):
    """MLP (in → hidden → hidden → bottleneck, GELU) -> L2 normalise -> weight-normalised linear to ``dim``."""

    def __init__(self, in_dim: int, dim: int, hidden: int = 2048, bottleneck: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last_layer = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck, dim, bias=False))
        magnitude = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            magnitude.fill_(1.0)
        magnitude.requires_grad_(False)  # DINO's norm_last_layer: only the directions train

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(features), dim=-1))


class DinoEncoder(nn.Module):
    """Backbone -> global feature (class token, or the mean of the map) -> :class:`DinoHead`."""

    def __init__(self, arch: str, *, dim: int, hidden: int, bottleneck: int, last_stride: int = 2,
                 image_size: tuple[int, int] = (256, 128), compute_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.backbone = build_backbone(arch, last_stride=last_stride, image_size=image_size)
        self.head = DinoHead(self.backbone.out_channels, dim, hidden, bottleneck)
        self.compute_dtype = compute_dtype

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with autocast(images.device.type, self.compute_dtype):
            feature_map, token = self.backbone.features(images)
            feature = feature_map.mean(dim=(2, 3)) if token is None else token
        return self.head(feature.float())


def dino_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], center: torch.Tensor,
              student_temperature: float, teacher_temperature: float) -> torch.Tensor:
    """Mean over (teacher global crop i, student crop v ≠ i) of −Σ softmax((t_i − c)/τt) · log_softmax(s_v/τs),
    each term averaged over the batch. ``student``: the global crops first, in the teacher's order."""
    targets = [F.softmax((t - center) / teacher_temperature, dim=-1) for t in teacher]
    logs = [F.log_softmax(s / student_temperature, dim=-1) for s in student]
    terms = [-(target * logs[v]).sum(dim=-1).mean() for i, target in enumerate(targets)
             for v in range(len(logs)) if v != i]
    return torch.stack(terms).mean()


class DinoTeacher(nn.Module):
    """The teacher network (an EMA copy of the student, no gradient) and the centre of its outputs."""

    def __init__(self, student: nn.Module, dim: int) -> None:
        super().__init__()
        self.network = copy.deepcopy(student)
        for parameter in self.network.parameters():
            parameter.requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, dim))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))


@PRETRAINERS.register("dino")
class Dino(PretrainingMethod):
    """DINO: self-distillation of a momentum teacher into the student across crops of one image."""

    weight_copies = 1  # the teacher

    def gradient_forwards_per_image(self) -> float:
        """The student sees 2 full-size crops and ``local_crops`` at a quarter of the area."""
        return 2.0 + self.config.pretrain.local_crops / 4

    def __init__(self, config) -> None:
        super().__init__(config)
        data, o = config.data, config.pretrain
        if o.local_crops and is_transformer(config.model.arch) and (data.height // 2 % PATCH or data.width // 2 % PATCH):
            raise ConfigError(f"pretrain.local_crops: the small crops ({data.height // 2}x{data.width // 2}, half of "
                              f"data.height x data.width) must be multiples of {PATCH} for {config.model.arch}; use an "
                              f"image size in multiples of {2 * PATCH} or pretrain.local_crops 0")

    def build_model(self, model_config: ModelConfig, num_classes: int, compute_dtype: torch.dtype | None):
        o, data = self.config.pretrain, self.config.data
        encoder = DinoEncoder(model_config.arch, dim=o.dim, hidden=o.head_hidden, bottleneck=o.head_bottleneck,
                              last_stride=o.last_stride, image_size=(data.height, data.width),
                              compute_dtype=compute_dtype)
        return encoder, "random (pre-training learns the backbone from scratch)"

    def train_transform(self) -> Any:
        from ..data.transforms import MultiCropViews

        return MultiCropViews(self.config.data, self.config.pretrain)

    def setup(self, ctx: AdaptContext, state: dict[str, Any] | None = None) -> None:
        self.teacher = DinoTeacher(ctx.unwrapped_model, self.config.pretrain.dim).to(ctx.device).train()
        if state is not None:
            self.teacher.load_state_dict(state)
        self.total_steps = max(1, self.stage_steps(ctx))

    def stage_steps(self, ctx: AdaptContext) -> int:
        o = self.config.pretrain
        per_epoch = o.iters_per_epoch or math.ceil(len(ctx.target_samples) / o.batch_size)
        return o.epochs * per_epoch

    def teacher_momentum(self) -> float:
        """``key_momentum`` rising to 1 on half a cosine over the run's steps (DINO's schedule)."""
        base = self.config.pretrain.key_momentum
        progress = min(1.0, int(self.teacher.steps) / self.total_steps)
        return 1.0 - (1.0 - base) * 0.5 * (1.0 + math.cos(math.pi * progress))

    @torch.no_grad()
    def update_teacher(self, student: nn.Module) -> None:
        momentum = self.teacher_momentum()
        for teacher, parameter in zip(self.teacher.network.parameters(), student.parameters()):
            teacher.mul_(momentum).add_(parameter.detach(), alpha=1.0 - momentum)
        self.teacher.steps += 1

    def training_step(self, ctx: AdaptContext, batch: dict[str, dict[str, Any]]) -> StepOutput:
        o = self.config.pretrain
        views = batch["target"]["image"]
        globals_ = torch.cat([views["global_0"], views["global_1"]]).to(ctx.device, non_blocking=True)
        student = list(ctx.model(globals_).chunk(2))
        if "local" in views:
            small = views["local"].to(ctx.device, non_blocking=True)
            student += list(ctx.model(small.transpose(0, 1).flatten(0, 1)).chunk(small.shape[1]))
        with torch.no_grad():
            teacher_out = self.teacher.network(globals_)
        loss = dino_loss(student, list(teacher_out.chunk(2)), self.teacher.center, o.temperature, o.teacher_temperature)
        self._batch_center = ctx.dist.mean(teacher_out.mean(dim=0, keepdim=True))  # every process's mean
        return StepOutput({"loss_dino": loss}, student[0])

    def before_optimizer_step(self, ctx: AdaptContext) -> None:
        if ctx.epoch < self.config.pretrain.freeze_last_layer:
            for parameter in ctx.unwrapped_model.head.last_layer.parameters():
                parameter.grad = None  # not trained yet, as DINO's cancel_gradients_last_layer

    def after_step(self, ctx: AdaptContext) -> None:
        self.update_teacher(ctx.unwrapped_model)
        m = self.config.pretrain.center_momentum
        self.teacher.center.mul_(m).add_(self._batch_center.to(self.teacher.center), alpha=1.0 - m)

    def after_epoch(self, ctx: AdaptContext) -> list[str]:
        ctx.dist.sync_buffers_from_main(self.teacher)  # the teacher's BN statistics: rank 0's
        return []

    def export_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The teacher's backbone (what DINO evaluates and TransReID-SSL releases)."""
        return {name: tensor.detach().cpu().clone() for name, tensor in self.teacher.network.backbone.state_dict().items()}

    def evaluation_model(self, network: nn.Module) -> nn.Module:
        return super().evaluation_model(self.teacher.network)

    def state_dict(self) -> dict[str, Any]:
        return self.teacher.state_dict()
