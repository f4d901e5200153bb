"""Losses: pure functions of tensors, except GDS, whose global statistics are its module's buffers."""

from .gds import GlobalDistanceSeparation
from .pplr import aals_loss, part_identity_loss, pglr_loss, pglr_targets
from .triplet import batch_hard_triplet_loss, pairwise_euclidean

__all__ = [
    "GlobalDistanceSeparation",
    "aals_loss",
    "batch_hard_triplet_loss",
    "pairwise_euclidean",
    "part_identity_loss",
    "pglr_loss",
    "pglr_targets",
]
