"""Batch-hard triplet loss (Hermans et al. 2017), as used by every re-ID baseline here."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_euclidean(features: torch.Tensor) -> torch.Tensor:
    """N×D -> N×N Euclidean distances (clamped before the square root for stable gradients)."""
    squared = features.pow(2).sum(dim=1, keepdim=True)
    dist2 = squared + squared.t() - 2.0 * features @ features.t()
    return dist2.clamp_min(1e-12).sqrt()


def batch_hard_triplet_loss(
    features: torch.Tensor, labels: torch.Tensor, margin: float = 0.3
) -> torch.Tensor:
    """Mean over anchors of the hardest positive vs the hardest negative.

    ``margin > 0``: relu(d_ap − d_an + margin); ``margin == 0``: soft margin softplus(d_ap − d_an).
    Anchors without a positive or without a negative in the batch are left out; a batch with no
    valid anchor gives a zero loss that still carries a graph.
    """
    dist = pairwise_euclidean(features)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positives = same & ~eye
    negatives = ~same
    valid = positives.any(dim=1) & negatives.any(dim=1)
    if not valid.any():
        return features.sum() * 0.0
    hardest_positive = dist.masked_fill(~positives, float("-inf")).amax(dim=1)
    hardest_negative = dist.masked_fill(~negatives, float("inf")).amin(dim=1)
    gap = (hardest_positive - hardest_negative)[valid]
    if margin > 0:
        return F.relu(gap + margin).mean()
    return F.softplus(gap).mean()
