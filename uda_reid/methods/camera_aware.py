"""Camera-aware proxies as a part any method can use (``--camera-proxies cap|pplr|off``).

Each epoch the proxies are rebuilt from the clustered features: one per (pseudo-label, camera),
in every feature space the method trains (PPLR: the global feature and each part; the baseline:
the global feature). Modes (METHODS.md §5):

- ``cap`` (Wang et al., AAAI 2021): intra-camera loss over the sample's own camera's proxies, plus
  from ``inter_start_epoch`` the inter-camera loss (all proxies of the label vs 50 hard negatives)
  weighted ``inter_weight``; proxies follow the network by a momentum update after each step.
- ``pplr`` (Cho et al., CVPR 2022): inter-camera loss with the other-camera proxies of the label as
  positives; proxies fixed within the epoch.

The loss of several spaces is λcam·(first space + mean of the others), PPLR's global + parts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import ConfigError
from ..memory.camera_proxies import CameraProxies

MODES = ("off", "cap", "pplr")


@dataclass
class CameraProxyOptions:
    """The ``method_options`` of a method that takes ``--camera-proxies`` (inherit it in the options)."""

    camera_proxies: str = "off"  # off | cap | pplr  (--camera-proxies)
    camera_weight: float = 0.5  # λcam (PPLR: 1.0 for MSMT17)
    camera_temperature: float = 0.07
    camera_hard_negatives: int = 50
    camera_inter_start_epoch: int = 5  # cap mode: inter-camera loss from this epoch


def check_camera_options(mode: str, where: str = "method_options.camera_proxies") -> None:
    if mode not in MODES:
        raise ConfigError(f"{where}: unknown value {mode!r}; expected one of {', '.join(MODES)}")


class CameraAwareProxies:
    """Proxies of one or more feature spaces and the chosen mode's loss on a batch."""

    def __init__(
        self,
        mode: str,
        *,
        weight: float = 0.5,
        temperature: float = 0.07,
        num_hard_negatives: int = 50,
        inter_start_epoch: int = 5,
        inter_weight: float = 0.5,
        momentum: float = 0.2,
    ) -> None:
        check_camera_options(mode)
        self.mode = mode
        self.weight = weight
        self.temperature = temperature
        self.num_hard_negatives = num_hard_negatives
        self.inter_start_epoch = inter_start_epoch
        self.inter_weight = inter_weight
        self.momentum = momentum
        self.banks: list[CameraProxies] = []
        self._pending: list[tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]] = []

    @classmethod
    def from_options(cls, options: CameraProxyOptions) -> CameraAwareProxies:
        """From a method's options (a :class:`CameraProxyOptions`)."""
        return cls(
            options.camera_proxies, weight=options.camera_weight, temperature=options.camera_temperature,
            num_hard_negatives=options.camera_hard_negatives, inter_start_epoch=options.camera_inter_start_epoch,
        )

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def rebuild(self, spaces: Sequence[torch.Tensor], labels, cameras, device: torch.device) -> dict[str, float]:
        """New proxies from every space's ``N×D`` features (−1 labels left out); returns figures."""
        self.banks = [CameraProxies(space.shape[1]).build(space, labels, cameras).to(device) for space in spaces]
        bank = self.banks[0]
        labels_with_proxies = bank.proxy_labels.unique()
        cameras_per_label = torch.bincount(bank.proxy_labels)[labels_with_proxies]
        return {
            "camera_proxies": bank.num_proxies,
            "single_camera_clusters": int((cameras_per_label == 1).sum()),
        }

    def loss(self, spaces: Sequence[torch.Tensor], labels: torch.Tensor, cameras: torch.Tensor, epoch: int) -> torch.Tensor:
        """λcam·(space 0 + mean of the other spaces) of the mode's loss on a batch (``B×D`` per space)."""
        per_space = [self._space_loss(bank, features, labels, cameras, epoch) for bank, features in zip(self.banks, spaces)]
        total = per_space[0]
        if len(per_space) > 1:
            total = total + torch.stack(per_space[1:]).mean()
        if self.mode == "cap":
            self._pending.append(([f.detach() for f in spaces], labels.detach(), cameras.detach()))
        return self.weight * total

    def _space_loss(self, bank: CameraProxies, features, labels, cameras, epoch: int) -> torch.Tensor:
        options = {"num_hard_negatives": self.num_hard_negatives, "temperature": self.temperature}
        if self.mode == "pplr":
            return bank.inter_camera_loss_pplr(features, labels, cameras, **options)
        loss = bank.intra_camera_loss(features, labels, cameras, temperature=self.temperature)
        if epoch >= self.inter_start_epoch:
            loss = loss + self.inter_weight * bank.inter_camera_loss_cap(features, labels, cameras, **options)
        return loss

    def after_step(self) -> None:
        """CAP: move the batch's proxies towards its features (after ``backward``)."""
        for spaces, labels, cameras in self._pending:
            for bank, features in zip(self.banks, spaces):
                bank.momentum_update(features, labels, cameras, momentum=self.momentum)
        self._pending = []
