"""Class centroids: a small tensor helper shared by memories, models and methods (bottom layer)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def class_centroids(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L2-normalised mean feature per class: ``N×D`` features, ``N`` labels in 0..C−1 -> ``C×D``.

    SpCL's source rows: the mean of each source identity's (normalised) features, renormalised.
    Every label in 0..max must occur, so row ``c`` is class ``c``'s centroid.
    """
    labels = labels.to(device=features.device, dtype=torch.long)
    num_classes = int(labels.max()) + 1
    counts = torch.bincount(labels, minlength=num_classes)
    if bool((counts == 0).any()):
        missing = torch.nonzero(counts == 0).flatten()[:10].tolist()
        raise ValueError(f"class_centroids: labels must cover 0..{num_classes - 1}; no sample has label(s) {missing}")
    sums = torch.zeros(num_classes, features.shape[1], dtype=features.dtype, device=features.device)
    sums.index_add_(0, labels, F.normalize(features, dim=1))
    return F.normalize(sums / counts.unsqueeze(1).to(features.dtype), dim=1)
