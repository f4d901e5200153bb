"""Camera-aware proxies: one centroid per (pseudo-label, camera) pair, and the losses built on them.

A cluster seen by several cameras gets one proxy per camera, so a loss can pull an image towards
its identity as seen from *other* cameras, which is what the camera shift makes hard. Two methods
use them (docs/methods.md §5):

* CAP (Wang et al., AAAI 2021): :meth:`CameraProxies.intra_camera_loss` +
  :meth:`CameraProxies.inter_camera_loss_cap`, proxies moved by :meth:`CameraProxies.momentum_update`
  after every step;
* PPLR with camera labels (Cho et al., CVPR 2022): :meth:`CameraProxies.inter_camera_loss_pplr`
  only, proxies fixed within the epoch (one ``CameraProxies`` for the global feature and one per part).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

_BUFFERS = ("proxies", "proxy_labels", "proxy_cameras", "sample_proxy")


class CameraProxies(nn.Module):
    """Proxy bank ``proxies`` (``M×D``, L2-normalised) with ``proxy_labels`` and ``proxy_cameras`` (``M``).

    Proxies are sorted by (label, camera). ``sample_proxy`` (``N``) maps each sample of the last
    :meth:`build` to its proxy row (−1 for outliers). All buffers are in the ``state_dict`` (resume)
    and follow ``.to(device)``; :meth:`build` writes to the buffers' device and dtype, and their
    sizes may change from epoch to epoch (``load_state_dict`` takes the saved sizes).

    Every loss L2-normalises its ``N×D`` input features, reads the proxies as constants (gradients
    reach the features only) and looks proxies up by the batch's (label, camera) pairs, so a batch
    may only hold labels that were clustered when the proxies were built (no −1). CAP's call order
    per step: losses -> ``backward`` -> :meth:`momentum_update` (updating first makes autograd
    refuse the backward, because the losses saved the proxies).
    """

    proxies: torch.Tensor
    proxy_labels: torch.Tensor
    proxy_cameras: torch.Tensor
    sample_proxy: torch.Tensor

    def __init__(self, feature_dim: int) -> None:
        super().__init__()
        if isinstance(feature_dim, bool) or not isinstance(feature_dim, int) or feature_dim < 1:
            raise ValueError(f"CameraProxies needs feature_dim >= 1, got {feature_dim!r}")
        self.feature_dim = feature_dim
        self.register_buffer("proxies", torch.zeros(0, feature_dim))
        self.register_buffer("proxy_labels", torch.zeros(0, dtype=torch.long))
        self.register_buffer("proxy_cameras", torch.zeros(0, dtype=torch.long))
        self.register_buffer("sample_proxy", torch.zeros(0, dtype=torch.long))

    @property
    def num_proxies(self) -> int:
        return int(self.proxies.shape[0])

    # ------------------------------------------------------------------ building and lookup

    @torch.no_grad()
    def build(
        self,
        features: torch.Tensor | np.ndarray,
        labels: torch.Tensor | np.ndarray,
        cameras: torch.Tensor | np.ndarray,
    ) -> CameraProxies:
        """Rebuild the bank: proxy (y, c) = L2-normalised mean of the L2-normalised features of the
        samples with label y seen by camera c, for every pair present.

        ``features`` ``N×D``, ``labels`` ``N`` (−1 = outlier, left out), ``cameras`` ``N``
        (0-based). Inputs are not modified. Returns ``self``.
        """
        features = torch.as_tensor(features)
        labels = torch.as_tensor(labels).long().cpu()
        cameras = torch.as_tensor(cameras).long().cpu()
        if features.dim() != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(f"CameraProxies.build: features must be N×{self.feature_dim}, got {tuple(features.shape)}")
        num_samples = features.shape[0]
        if labels.shape != (num_samples,) or cameras.shape != (num_samples,):
            raise ValueError(
                f"CameraProxies.build: need one label and one camera per feature row ({num_samples}), "
                f"got shapes {tuple(labels.shape)} and {tuple(cameras.shape)}"
            )
        if num_samples and int(cameras.min()) < 0:
            raise ValueError(f"CameraProxies.build: camera ids must be >= 0, got {int(cameras.min())}")
        unit = F.normalize(features.detach().to(self.proxies), dim=1)
        clustered = labels >= 0
        stride = int(cameras.max()) + 1 if num_samples else 1
        keys = labels * stride + cameras  # sorting keys sorts by (label, camera)
        unique_keys, proxy_of_clustered = torch.unique(keys[clustered], return_inverse=True)
        sums = unit.new_zeros(len(unique_keys), self.feature_dim)
        sums.index_add_(0, proxy_of_clustered.to(unit.device), unit[clustered.to(unit.device)])
        sample_proxy = torch.full((num_samples,), -1, dtype=torch.long)
        sample_proxy[clustered] = proxy_of_clustered
        device = self.proxies.device
        self.proxies = F.normalize(sums, dim=1)  # the mean's direction: the sum's
        self.proxy_labels = (unique_keys // stride).to(device)
        self.proxy_cameras = (unique_keys % stride).to(device)
        self.sample_proxy = sample_proxy.to(device)
        return self

    def proxy_index(self, labels: torch.Tensor, cameras: torch.Tensor) -> torch.Tensor:
        """Row of the proxy of each (label, camera) pair: ``N`` long on the buffers' device."""
        labels = torch.as_tensor(labels, device=self.proxy_labels.device).long()
        cameras = torch.as_tensor(cameras, device=self.proxy_labels.device).long()
        if labels.dim() != 1 or labels.shape != cameras.shape:
            raise ValueError(
                f"CameraProxies: labels and cameras must be two vectors of equal length, got shapes "
                f"{tuple(labels.shape)} and {tuple(cameras.shape)}"
            )
        if labels.numel() == 0:
            return labels
        if self.num_proxies == 0:
            raise ValueError("CameraProxies: the bank is empty; call build() with clustered samples first")
        stride = max(int(self.proxy_cameras.max()), int(cameras.max())) + 1
        bank_keys = self.proxy_labels * stride + self.proxy_cameras
        keys = labels * stride + cameras
        rows = torch.searchsorted(bank_keys, keys).clamp(max=self.num_proxies - 1)
        missing = (bank_keys[rows] != keys) | (cameras < 0)
        if bool(missing.any()):
            pairs = list(zip(labels[missing].tolist(), cameras[missing].tolist()))[:5]
            raise ValueError(
                f"CameraProxies: no proxy for (label, camera) pair(s) {pairs}; batches may only hold "
                f"labels clustered when the proxies were built (outliers, −1, have none)"
            )
        return rows

    # ------------------------------------------------------------------ losses

    def _batch(
        self, features: torch.Tensor, labels: torch.Tensor, cameras: torch.Tensor, temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Checked batch -> (logits ``N×M`` = cos(f, proxy)/τ, labels, cameras, proxy rows), on the
        features' device."""
        if features.dim() != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(f"CameraProxies: features must be N×{self.feature_dim}, got {tuple(features.shape)}")
        if temperature <= 0:
            raise ValueError(f"CameraProxies: temperature must be positive, got {temperature!r}")
        rows = self.proxy_index(labels, cameras)
        if rows.shape[0] != features.shape[0]:
            raise ValueError(
                f"CameraProxies: need one label and camera per feature row ({features.shape[0]}), got {rows.shape[0]}"
            )
        device = features.device
        unit = F.normalize(features, dim=1)
        logits = unit @ self.proxies.to(device=device, dtype=unit.dtype).t() / temperature
        labels = torch.as_tensor(labels, device=device).long()
        cameras = torch.as_tensor(cameras, device=device).long()
        return logits, labels, cameras, rows.to(device)

    def intra_camera_loss(
        self, features: torch.Tensor, labels: torch.Tensor, cameras: torch.Tensor, *, temperature: float = 0.07
    ) -> torch.Tensor:
        """CAP's intra-camera loss: per camera, the mean cross-entropy of its samples over the
        proxies of that camera only (target: the sample's own proxy); summed over the cameras
        present in the batch.

        ``features`` ``N×D``, ``labels`` and ``cameras`` ``N``. A camera's proxies compete only
        with each other, so the loss learns identities within a camera without the camera shift.
        """
        logits, _, cameras, rows = self._batch(features, labels, cameras, temperature)
        same_camera = self.proxy_cameras.to(logits.device)[None, :] == cameras[:, None]  # N×M
        per_sample = F.cross_entropy(logits.masked_fill(~same_camera, float("-inf")), rows, reduction="none")
        return _sum_of_camera_means(per_sample, cameras)

    def inter_camera_loss_cap(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        cameras: torch.Tensor,
        *,
        num_hard_negatives: int = 50,
        temperature: float = 0.07,
    ) -> torch.Tensor:
        """CAP's inter-camera loss: positives = every proxy of the sample's label (all cameras),
        negatives = the ``num_hard_negatives`` proxies of other labels most similar to the sample.

        Per sample: −(1/|P|)·Σ_{p∈P} log softmax_{P ∪ hard negatives}(f·proxy/τ) (soft target
        1/|P| on each positive). Reduced like the intra-camera loss: mean per camera, summed over
        the cameras of the batch (as the reference code, before its 0.5 weight). When fewer than
        ``num_hard_negatives`` other-label proxies exist, all of them are used.
        """
        _check_hard_negatives(num_hard_negatives)
        logits, labels, cameras, _ = self._batch(features, labels, cameras, temperature)
        positives = self.proxy_labels.to(logits.device)[None, :] == labels[:, None]
        per_sample = _soft_target_contrastive(logits, positives, ~positives, num_hard_negatives)
        return _sum_of_camera_means(per_sample, cameras)

    def inter_camera_loss_pplr(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        cameras: torch.Tensor,
        *,
        num_hard_negatives: int = 50,
        temperature: float = 0.07,
    ) -> torch.Tensor:
        """PPLR's inter-camera loss: positives = proxies of the sample's label from *other* cameras
        only, negatives = the ``num_hard_negatives`` most similar proxies of other labels (the
        same-label same-camera proxy takes no part).

        Per-sample term as in :meth:`inter_camera_loss_cap`; samples whose label has no proxy in
        another camera are skipped. The sum over the remaining samples is divided by the batch
        size N (the reference code's normalisation: a skipped sample counts as 0). A batch with
        no remaining sample gives a zero loss that still carries a graph.
        """
        _check_hard_negatives(num_hard_negatives)
        logits, labels, cameras, _ = self._batch(features, labels, cameras, temperature)
        same_label = self.proxy_labels.to(logits.device)[None, :] == labels[:, None]
        other_camera = self.proxy_cameras.to(logits.device)[None, :] != cameras[:, None]
        positives = same_label & other_camera
        has_positive = positives.any(dim=1)
        if not bool(has_positive.any()):
            return logits.sum() * 0.0
        per_sample = _soft_target_contrastive(
            logits[has_positive], positives[has_positive], ~same_label[has_positive], num_hard_negatives
        )
        return per_sample.sum() / logits.shape[0]

    # ------------------------------------------------------------------ update and resume

    @torch.no_grad()
    def momentum_update(
        self, features: torch.Tensor, labels: torch.Tensor, cameras: torch.Tensor, *, momentum: float = 0.2
    ) -> None:
        """CAP's update after ``backward``: for each sample in batch order,
        proxy ← normalise(m·proxy + (1−m)·f) with f L2-normalised and m the OLD proxy's weight (0.2).

        PPLR keeps its proxies fixed within an epoch and never calls this.
        """
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"CameraProxies: momentum must be in [0, 1) (weight of the old proxy), got {momentum!r}")
        if features.dim() != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(f"CameraProxies: features must be N×{self.feature_dim}, got {tuple(features.shape)}")
        rows = self.proxy_index(labels, cameras).tolist()
        if len(rows) != features.shape[0]:
            raise ValueError(f"CameraProxies: need one label per feature row ({features.shape[0]}), got {len(rows)}")
        unit = F.normalize(features.detach(), dim=1).to(self.proxies)
        for feature, row in zip(unit, rows):
            self.proxies[row] = F.normalize(momentum * self.proxies[row] + (1.0 - momentum) * feature, dim=0)

    def _load_from_state_dict(
        self,
        state_dict: Mapping[str, Any],
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # The bank's size is the saved epoch's: resize each buffer to the saved shape, then copy.
        for name in _BUFFERS:
            saved = state_dict.get(prefix + name)
            current = self._buffers[name]
            if not isinstance(saved, torch.Tensor) or saved.shape == current.shape:
                continue
            # Only the row count may differ; a different feature size stays a size-mismatch error.
            if saved.dim() == current.dim() and saved.shape[1:] == current.shape[1:]:
                self._buffers[name] = torch.empty(saved.shape, dtype=current.dtype, device=current.device)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return f"dim={self.feature_dim}, proxies={self.num_proxies}"


def _soft_target_contrastive(
    logits: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, num_hard_negatives: int
) -> torch.Tensor:
    """Per row: −mean over positives of log softmax over (positives ∪ hardest negatives).

    ``logits`` ``N×M``; ``positives`` / ``negatives`` boolean ``N×M`` (every row has a positive).
    The hardest negatives are the ``num_hard_negatives`` with the highest logits (ranked without
    gradient); rows with fewer negatives use all of theirs.
    """
    selected = positives.clone()
    count = min(num_hard_negatives, logits.shape[1])
    if count > 0:
        ranking = logits.detach().masked_fill(~negatives, float("-inf"))
        hardest = ranking.topk(count, dim=1)
        chosen = torch.zeros_like(selected).scatter_(1, hardest.indices, torch.isfinite(hardest.values))
        selected |= chosen & negatives
    log_normalizer = torch.logsumexp(logits.masked_fill(~selected, float("-inf")), dim=1)
    positive_count = positives.sum(dim=1).to(logits.dtype)
    positive_mean = (logits * positives).sum(dim=1) / positive_count
    return log_normalizer - positive_mean


def _check_hard_negatives(num_hard_negatives: int) -> None:
    if isinstance(num_hard_negatives, bool) or not isinstance(num_hard_negatives, int) or num_hard_negatives < 0:
        raise ValueError(f"CameraProxies: num_hard_negatives must be an integer >= 0, got {num_hard_negatives!r}")


def _sum_of_camera_means(per_sample: torch.Tensor, cameras: torch.Tensor) -> torch.Tensor:
    """Σ over the cameras present of the mean of ``per_sample`` (``N``) over that camera's samples."""
    present, camera_of_sample = torch.unique(cameras, return_inverse=True)
    sums = per_sample.new_zeros(len(present)).index_add(0, camera_of_sample, per_sample)
    counts = torch.bincount(camera_of_sample, minlength=len(present)).to(per_sample.dtype)
    return (sums / counts).sum()


MODES = ("off", "cap", "pplr")


class CameraAwareProxies:
    """Proxies of one or more feature spaces and the chosen mode's loss on a batch.

    Modes (docs/methods.md §5): ``cap`` (Wang et al., AAAI 2021): intra-camera loss over the sample's own
    camera's proxies, plus from ``inter_start_epoch`` the inter-camera loss (all proxies of the
    label vs the hardest negatives) weighted ``inter_weight``; proxies follow the network by a
    momentum update after each step. ``pplr`` (Cho et al., CVPR 2022): inter-camera loss with the
    other-camera proxies of the label as positives; proxies fixed within the epoch. The loss of
    several spaces is λcam·(first space + mean of the others), PPLR's global + parts.
    """

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
        if mode not in MODES:
            raise ConfigError(f"camera_proxies.mode: unknown value {mode!r}; expected one of {', '.join(MODES)}")
        self.mode = mode
        self.weight = weight
        self.temperature = temperature
        self.num_hard_negatives = num_hard_negatives
        self.inter_start_epoch = inter_start_epoch
        self.inter_weight = inter_weight
        self.momentum = momentum
        self.banks: list[CameraProxies] = []
        self._pending: list[tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]] = []

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
