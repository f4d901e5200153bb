"""Camera-aware proxies as an add-on (``--camera-proxies cap|pplr``; recipe section ``camera_proxies``).

Each epoch the proxies are rebuilt from the clustered images, one per (cluster, camera), in every
feature space the method trains (PPLR: the global feature and each part; others: their feature),
and the mode's loss is added on the batch's clustered images (an un-clustered instance, which
SpCL trains as its own class, has no proxy and is left out). Modes and the loss of several spaces:
``uda_reid.memory.camera_proxies.CameraAwareProxies``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config import FRACTION, NON_NEGATIVE, POSITIVE, RunConfig, setting
from ..memory.camera_proxies import MODES, CameraAwareProxies
from ..methods.base import AdaptContext, StepOutput
from .base import ADD_ONS, AddOn, CliFlag


@dataclass
class CameraProxyOptions:
    """Camera-aware proxies added to any method's losses (``--camera-proxies``; docs/methods.md §5): the
    recipe section ``camera_proxies``.

    One proxy per (cluster, camera), rebuilt every epoch from the clustered features. ``cap``: CAP's
    intra-camera loss, + ``inter_weight`` × its inter-camera loss from ``inter_start_epoch``,
    proxies momentum-updated after each step; ``pplr``: PPLR's inter-camera loss, proxies fixed
    within the epoch. (CAP as published is ``--method cap``.)
    """

    mode: str = setting("off", choices=MODES, help="off | cap | pplr")
    weight: float = setting(0.5, limit=NON_NEGATIVE, help="λcam (PPLR: 1.0 for MSMT17)")
    temperature: float = setting(0.07, limit=POSITIVE)
    hard_negatives: int = setting(50, limit=NON_NEGATIVE)
    inter_start_epoch: int = setting(5, limit=NON_NEGATIVE, help="cap mode")
    inter_weight: float = setting(0.5, limit=NON_NEGATIVE, help="cap mode")
    momentum: float = setting(0.2, limit=FRACTION, help="cap mode: weight the old proxy keeps")


@ADD_ONS.register("camera_proxies")
class CameraProxyTerm(AddOn):
    section = "camera_proxies"
    Options = CameraProxyOptions
    flags = (
        CliFlag("--camera-proxies", "Add camera-aware proxy losses to the method (an add-on, any method but cap): "
                "CAP's losses or PPLR's inter-camera loss, or off.", key="camera_proxies.mode"),
    )
    needs_features = True

    def __init__(self, config: RunConfig) -> None:
        super().__init__(config)
        c = config.camera_proxies
        self.proxies = CameraAwareProxies(
            c.mode, weight=c.weight, temperature=c.temperature, num_hard_negatives=c.hard_negatives,
            inter_start_epoch=c.inter_start_epoch, inter_weight=c.inter_weight, momentum=c.momentum,
        )
        self.cluster_labels: torch.Tensor | None = None  # N, −1 = no proxy; None: no cluster this epoch

    @classmethod
    def enabled(cls, config: RunConfig) -> bool:
        return config.camera_proxies.mode != "off"  # a mode outside MODES is refused where it is set

    def on_clusters(self, cluster_labels: np.ndarray, spaces: list[torch.Tensor], ctx: AdaptContext) -> dict[str, float]:
        if not (cluster_labels >= 0).any():
            self.cluster_labels = None
            return {}
        cameras = np.array([s.camid for s in ctx.target_samples])
        self.cluster_labels = torch.from_numpy(np.asarray(cluster_labels, dtype=np.int64))
        return self.proxies.rebuild(spaces, cluster_labels, cameras, ctx.device)

    def loss(self, step: StepOutput, batch: dict[str, dict[str, torch.Tensor]], ctx: AdaptContext) -> dict[str, torch.Tensor]:
        if self.cluster_labels is None:
            return {}
        gather = ctx.dist.gather_batch  # the global batch (the identity in one process)
        target = batch["target"]
        device = step.spaces[0].device
        labels = gather(self.cluster_labels[target["index"]].to(device))
        cameras = gather(target["camid"].to(device))
        spaces = [gather(features) for features in step.spaces]
        clustered = labels >= 0
        if not bool(clustered.all()):
            spaces, labels, cameras = [s[clustered] for s in spaces], labels[clustered], cameras[clustered]
        if len(labels) == 0:
            return {"loss_camera": spaces[0].sum() * 0.0}
        return {"loss_camera": self.proxies.loss(spaces, labels, cameras, ctx.epoch)}

    def after_step(self, ctx: AdaptContext) -> None:
        self.proxies.after_step()
