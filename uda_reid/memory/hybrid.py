"""SpCL's hybrid memory: one feature bank for source class centroids, target clusters and instances.

Rows (``M×D``, L2-normalised) are source class centroids (UDA only, one per source id) followed by one
slot per target training image. Every row carries a class label; a class's score for a query is the
mean of its member rows' logits, so a target cluster is represented by (the unnormalised mean of) its
members and a source centroid or an un-clustered instance by itself. The memory is never re-extracted:
rows follow the network through a momentum update after each step, and the clustering stage of the
next epoch runs on the target rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class HybridMemory(nn.Module):
    """Feature bank ``features`` (``M×D``) with class ``labels`` (``M``) and the unified contrastive loss.

    Parameters
    ----------
    feature_dim: ``D``, the size of the network's output feature.
    num_rows: ``M`` = number of source classes + number of target images (UDA) or target images (USL).
    temperature: τ in logits = f·Mᵀ/τ (SpCL: 0.05).
    momentum: weight the OLD row keeps in the update M[y] ← m·M[y] + (1−m)·f (SpCL: 0.2).

    Both buffers are in the ``state_dict`` (resume) and follow ``.to(device)``; the device of every
    computation is the buffers' device. Call order per step: ``loss`` -> ``backward`` -> ``update``
    (updating before ``backward`` raises autograd's in-place error, because the loss saved the rows).
    """

    features: torch.Tensor
    labels: torch.Tensor

    def __init__(self, feature_dim: int, num_rows: int, *, temperature: float = 0.05, momentum: float = 0.2) -> None:
        super().__init__()
        if feature_dim < 1 or num_rows < 1:
            raise ValueError(f"HybridMemory needs feature_dim >= 1 and num_rows >= 1, got {feature_dim} and {num_rows}")
        if temperature <= 0:
            raise ValueError(f"HybridMemory temperature must be positive, got {temperature!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"HybridMemory momentum must be in [0, 1) (weight of the old row), got {momentum!r}")
        self.feature_dim = feature_dim
        self.num_rows = num_rows
        self.temperature = temperature
        self.momentum = momentum
        self.register_buffer("features", torch.zeros(num_rows, feature_dim))
        self.register_buffer("labels", torch.arange(num_rows))

    def initialize(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Fill the bank with ``features`` (``M×D``, L2-normalised here) and set ``labels`` (``M``)."""
        if tuple(features.shape) != (self.num_rows, self.feature_dim):
            raise ValueError(
                f"HybridMemory.initialize: features must be {self.num_rows}×{self.feature_dim} "
                f"(num_rows×feature_dim), got {tuple(features.shape)}"
            )
        with torch.no_grad():
            normalized = F.normalize(features.detach().to(self.features), dim=1)
            self.features.copy_(normalized)
        self.set_labels(labels)

    def set_labels(self, labels: torch.Tensor) -> None:
        """Replace the row labels (``M`` non-negative ints), e.g. after each epoch's clustering.

        UDA convention: source centroid rows keep 0..S−1, target rows get S + cluster id and
        un-clustered instances unique labels after those. Label ids without rows are allowed: such a
        class gets no probability in the loss.
        """
        labels = torch.as_tensor(labels)
        if labels.dim() != 1 or labels.shape[0] != self.num_rows:
            raise ValueError(
                f"HybridMemory.set_labels: expected {self.num_rows} labels (one per memory row), "
                f"got shape {tuple(labels.shape)}"
            )
        if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.dtype.is_complex:
            raise ValueError(f"HybridMemory.set_labels: labels must be integers, got dtype {labels.dtype}")
        if bool((labels < 0).any()):
            raise ValueError(
                "HybridMemory.set_labels: labels must be >= 0; give outliers their own labels first "
                "(uda_reid.clustering.reliability.unique_outlier_labels)"
            )
        self.labels.copy_(labels.to(self.labels.device, torch.long))

    def log_probabilities(self, inputs: torch.Tensor) -> torch.Tensor:
        """Log-softmax over classes of the class scores: ``N×D`` -> ``N×C`` with C = max label + 1.

        score(n, c) = Σ_{r: label r = c} <f_n, M_r>/τ ÷ |{r: label r = c}| (f_n L2-normalised);
        classes without rows are −inf, i.e. zero probability. Sums go through ``index_add`` over the
        rows, so there is no loop over classes and no ``M×C`` one-hot.
        """
        if inputs.dim() != 2 or inputs.shape[1] != self.feature_dim:
            raise ValueError(f"HybridMemory: inputs must be N×{self.feature_dim}, got {tuple(inputs.shape)}")
        logits = F.normalize(inputs, dim=1).to(self.features.dtype) @ self.features.t() / self.temperature  # N×M
        num_classes = int(self.labels.max()) + 1
        sums = logits.new_zeros(logits.shape[0], num_classes).index_add_(1, self.labels, logits)  # N×C
        counts = torch.bincount(self.labels, minlength=num_classes)  # C
        scores = sums / counts.clamp(min=1).to(sums.dtype)
        scores = scores.masked_fill(counts == 0, float("-inf"))
        return F.log_softmax(scores, dim=1)

    def loss(self, inputs: torch.Tensor, indexes: torch.Tensor) -> torch.Tensor:
        """Unified contrastive loss: mean cross-entropy of ``N×D`` features on the classes of rows ``indexes``.

        ``indexes`` (``N``) are memory rows: a source sample's class row (its id), a target sample's
        own slot (S + image index). Gradients reach ``inputs`` only; the bank is a constant here.
        """
        targets = self.labels[self._rows(inputs, indexes)]
        return F.nll_loss(self.log_probabilities(inputs), targets)

    @torch.no_grad()
    def update(self, inputs: torch.Tensor, indexes: torch.Tensor) -> None:
        """Momentum update after ``backward``: for each sample in order, M[y] ← normalise(m·M[y] + (1−m)·f).

        ``inputs`` ``N×D`` (L2-normalised here), ``indexes`` ``N`` rows. Samples are applied one after
        the other, so a row hit twice in a batch (four instances of a source id) moves twice, as in the
        reference code; a batch is at most a few hundred rows, so the loop costs little.
        """
        rows = self._rows(inputs, indexes).tolist()
        normalized = F.normalize(inputs.detach(), dim=1).to(self.features)
        for feature, row in zip(normalized, rows):
            moved = self.momentum * self.features[row] + (1.0 - self.momentum) * feature
            self.features[row] = F.normalize(moved, dim=0)

    def _rows(self, inputs: torch.Tensor, indexes: torch.Tensor) -> torch.Tensor:
        """``N`` memory row indexes as a long tensor on the buffers' device, checked against ``N×D`` inputs."""
        rows = torch.as_tensor(indexes, device=self.labels.device).long()
        if rows.dim() != 1 or rows.shape[0] != inputs.shape[0]:
            raise ValueError(
                f"HybridMemory: need one row index per input ({inputs.shape[0]}), got shape {tuple(rows.shape)}"
            )
        if rows.numel() and not (0 <= int(rows.min()) and int(rows.max()) < self.num_rows):
            raise ValueError(
                f"HybridMemory: row indexes must be in 0..{self.num_rows - 1}, got {int(rows.min())}..{int(rows.max())}"
            )
        return rows

    def extra_repr(self) -> str:
        return f"rows={self.num_rows}, dim={self.feature_dim}, temperature={self.temperature}, momentum={self.momentum}"
