"""Losses are pure functions of tensors; state lives in memory modules."""

from .triplet import batch_hard_triplet_loss, pairwise_euclidean

__all__ = ["batch_hard_triplet_loss", "pairwise_euclidean"]
