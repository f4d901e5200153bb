"""What every self-kNN backend shares: the result type, the registry, the tie rule and the float32
similarity of two rows.

The backends live in :mod:`.knn_cpu`, :mod:`.knn_gpu` and :mod:`.knn_faiss`; :mod:`.knn` is the
entry point (:func:`~uda_reid.clustering.knn.knn_search`) and the module to import from. All of them
take features already checked and L2-normalised (:func:`~uda_reid.clustering.inputs.unit_features`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from numba import njit

from ..registry import Registry

_INDEX_SENTINEL = np.iinfo(np.int32).max  # index of an empty list slot: loses every tie


@dataclass(frozen=True)
class NeighborLists:
    """Self-kNN result. ``indices`` N×k int64 and ``similarities`` N×k float32, best first."""

    indices: np.ndarray
    similarities: np.ndarray
    backend: str
    # Smallest similarity of each row to any sample (exact ``torch`` backend with
    # ``track_farthest=True`` only): the row maximum of the squared distance used by re-ranking.
    farthest_similarity: np.ndarray | None = None
    product: str = "float32"  # the arithmetic of the candidate search (bf16: then re-scored in float32)
    rechecked_rows: int = 0  # bf16 search: rows whose margin was too thin, searched again in float32


# A backend is called as ``backend(features, k, **options)``: by knn_search with checked
# UnitFeatures, by users with raw features, so it starts with ``unit_features(features)``.
KnnBackend = Callable[..., NeighborLists]
KNN_BACKENDS: Registry[KnnBackend] = Registry("knn backend", "--knn")


@njit(cache=True, inline="always")
def _beats(sim_a, idx_a, sim_b, idx_b):
    """The tie rule: (sim_a, idx_a) ranks before (sim_b, idx_b): higher similarity, then smaller index."""
    return sim_a > sim_b or (sim_a == sim_b and idx_a < idx_b)


@njit(cache=True, fastmath=True)
def dot_rows(unit, i, j):
    """<unit[i], unit[j]> in float32 (numba; shared by the kNN correction and the Jaccard weights)."""
    total = np.float32(0.0)
    for d in range(unit.shape[1]):
        total += unit[i, d] * unit[j, d]
    return total


def _block_candidates(block: torch.Tensor, offset: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best entries of each row of ``block`` (may be a transposed view), ties by smaller column.

    ``topk`` picks among equal values arbitrarily, so rows where a value tied with the k-th one was
    left out (duplicate images) take their tied entries in column order instead, in chunks of
    rows/32 (the memory the device planner counts). Used by the device search on every block and by
    the CPU search for the rows it re-searches.
    """
    values, columns = block.topk(k, dim=1)
    boundary = values[:, -1:]
    ambiguous = ((block == boundary).sum(dim=1) > (values == boundary).sum(dim=1)).nonzero().flatten()
    chunk = max(1, block.shape[0] // 32)
    for start in range(0, ambiguous.numel(), chunk):
        rows = ambiguous[start : start + chunk]
        sub, limit = block[rows], boundary[rows]
        above, tied = sub > limit, sub == limit
        wanted = k - above.sum(dim=1, keepdim=True)
        taken = above | (tied & (tied.cumsum(dim=1) <= wanted))  # exactly k per row, in column order
        picked = taken.nonzero()[:, 1].view(len(rows), k)
        chosen = sub.gather(1, picked)
        order = torch.argsort(chosen, dim=1, descending=True, stable=True)  # ties keep column order
        values[rows], columns[rows] = chosen.gather(1, order), picked.gather(1, order)
    return values, columns + offset
