"""PPLR's cross-agreement: how much each part feature space agrees with the global one, per image.

C[i, n] = |kNN_g(i) ∩ kNN_n(i)| / |kNN_g(i) ∪ kNN_n(i)| with k neighbours, the image itself left
out (docs/methods.md §4). A part whose neighbourhood of image i matches the global one is trusted for
i's label: AALS smooths that part's label less, PGLR weighs its prediction more.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .inputs import FeatureArray, InvalidFeaturesError, InvalidParameterError
from .knn import NeighborLists, knn_search

# Rows scored per chunk: the N×2k sort buffer stays ~40 MB at k = 20 whatever N is.
_CHUNK_ROWS = 1 << 17


def neighbors_without_self(indices: np.ndarray, k: int, *, name: str = "neighbour lists") -> np.ndarray:
    """The first ``k`` entries of each row of ``indices`` (``N×K``) that are not the row itself.

    Exact search puts the sample at column 0, but duplicates (ties) or an approximate search can
    put it elsewhere or drop it; removing it by value covers every case. ``N×k`` int64.
    """
    indices = np.asarray(indices)
    if indices.ndim != 2 or not np.issubdtype(indices.dtype, np.integer):
        raise InvalidFeaturesError(f"{name} must be an N×K integer array; received shape {indices.shape}, dtype {indices.dtype}")
    n, columns = indices.shape
    if columns < k + 1:
        raise InvalidParameterError(
            f"{name} have {columns} columns, but cross-agreement with k={k} needs at least k+1={k + 1} "
            f"(self included): raise the clustering k1 or lower k"
        )
    not_self = indices != np.arange(n)[:, None]
    rank_among_others = np.cumsum(not_self, axis=1)
    keep = not_self & (rank_among_others <= k)
    short = np.nonzero(keep.sum(axis=1) < k)[0]
    if len(short):  # only when a row lists itself more than once, i.e. broken lists
        raise InvalidFeaturesError(f"{name}: rows {short[:10].tolist()} have fewer than k={k} neighbours besides themselves")
    return indices[keep].reshape(n, k).astype(np.int64, copy=False)


def _overlap_scores(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Per-row |A ∩ B| / |A ∪ B| of two ``N×k`` lists, each row free of repeats: ``N`` float32."""
    n, k = first.shape
    scores = np.empty(n, dtype=np.float32)
    for start in range(0, n, _CHUNK_ROWS):
        both = np.sort(np.concatenate([first[start : start + _CHUNK_ROWS], second[start : start + _CHUNK_ROWS]], axis=1), axis=1)
        shared = (both[:, 1:] == both[:, :-1]).sum(axis=1)  # a common index appears twice, side by side
        scores[start : start + _CHUNK_ROWS] = shared / (2 * k - shared)
    return scores


def _part_feature_list(part_features: FeatureArray | Sequence[FeatureArray], num_samples: int) -> list[FeatureArray]:
    if isinstance(part_features, (np.ndarray, torch.Tensor)):
        if part_features.ndim != 3:
            raise InvalidFeaturesError(
                f"part features must be P×N×D (or a list of N×D); received shape {tuple(part_features.shape)}"
            )
        parts = list(part_features)
    else:
        parts = list(part_features)
    if not parts:
        raise InvalidFeaturesError("part features are empty: need at least one part")
    for number, part in enumerate(parts):
        if len(getattr(part, "shape", ())) != 2 or part.shape[0] != num_samples:
            raise InvalidFeaturesError(
                f"features of part {number} must be N×D with N={num_samples} (one row per global "
                f"neighbour list); received shape {tuple(getattr(part, 'shape', ()))}"
            )
    return parts


def cross_agreement(
    global_neighbors: np.ndarray | NeighborLists,
    part_features: FeatureArray | Sequence[FeatureArray],
    k: int = 20,
    *,
    knn: str = "auto",
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Cross-agreement scores ``N×P`` (float32, in [0, 1]) of every image with every part.

    ``global_neighbors``: the global kNN lists ``N×K`` of the clustering stage
    (``ClusterResult.neighbors``, self included, K ≥ k+1), so the global search is not repeated;
    for a clusterer without neighbour lists (K-means) pass ``knn_search(global, k + 1)``.
    ``part_features``: ``P×N×D`` (or P arrays ``N×D``); each part gets a ``knn_search`` with
    ``k+1`` neighbours (backend ``knn``). The image itself is removed from every list. Nothing
    ``N×N`` is built. Inputs are not modified.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InvalidParameterError(f"cross-agreement k must be an integer ≥ 1; received {k!r}")
    if isinstance(global_neighbors, NeighborLists):
        global_neighbors = global_neighbors.indices
    global_lists = neighbors_without_self(global_neighbors, k, name="global neighbour lists")
    parts = _part_feature_list(part_features, global_lists.shape[0])
    scores = np.empty((global_lists.shape[0], len(parts)), dtype=np.float32)
    for number, part in enumerate(parts):
        part_lists = knn_search(part, k + 1, knn=knn, device=device).indices
        part_lists = neighbors_without_self(part_lists, k, name=f"part {number} neighbour lists")
        scores[:, number] = _overlap_scores(global_lists, part_lists)
    return scores
