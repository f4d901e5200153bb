"""Slow dense reference of the k-reciprocal Jaccard distance and re-ranking (benchmarks/tests only).

A direct transcription of the published algorithm (docs/methods.md §1; Zhong et al. CVPR 2017 and the
variant SpCL / cluster-contrast / PPLR / CAP cluster with), written for clarity: dense N×N arrays,
Python loops over samples, set operations on plain index lists. It is the independent brute force
the tests compare :mod:`uda_reid.clustering.jaccard` against, and what ``--reference`` times in the
clustering benchmark. Memory is O(N²): keep N ≲ 15,000.

Ranking rule shared with the library: neighbours by similarity descending (= squared distance
ascending on unit vectors), ties by smaller index.
"""

from __future__ import annotations

import numpy as np


def unit_rows(features) -> np.ndarray:
    """N×D float32 rows scaled to unit length (accepts numpy arrays and CPU torch tensors)."""
    array = np.asarray(features, dtype=np.float32)
    return array / np.linalg.norm(array, axis=1, keepdims=True)


def dense_neighbor_lists(unit: np.ndarray, k: int) -> np.ndarray:
    """First k columns of the full ranking of every row (self included), ties by smaller index."""
    similarity = unit @ unit.T
    return np.argsort(-similarity, axis=1, kind="stable")[:, :k]


def _reciprocal(ranking: np.ndarray, i: int, width: int) -> list[int]:
    """Members of i's first ``width`` neighbours that also have i among their first ``width``."""
    return [int(j) for j in ranking[i, :width] if i in ranking[j, :width]]


def _encoding(unit: np.ndarray, ranking: np.ndarray, forward_width: int, half: int, squared: np.ndarray) -> np.ndarray:
    """Dense V: softmax of −squared distance over the expanded k-reciprocal set of each row."""
    n = unit.shape[0]
    full_sets = [_reciprocal(ranking, i, forward_width) for i in range(n)]
    half_sets = [_reciprocal(ranking, i, half) for i in range(n)]
    encoding = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        expanded = list(full_sets[i])
        for candidate in full_sets[i]:
            candidate_set = half_sets[candidate]
            common = len(set(candidate_set) & set(full_sets[i]))
            if common > 2 / 3 * len(candidate_set):
                expanded += candidate_set
        members = np.unique(expanded)
        distances = squared[i, members].astype(np.float64)
        weights = np.exp(-(distances - distances.min()))
        encoding[i, members] = weights / weights.sum()
    return encoding


def _expand(encoding: np.ndarray, ranking: np.ndarray, k2: int) -> np.ndarray:
    if k2 == 1:
        return encoding
    return np.stack([encoding[ranking[i, :k2]].mean(axis=0) for i in range(encoding.shape[0])])


def _jaccard(encoding: np.ndarray, rows: range) -> np.ndarray:
    """1 − S/(2 − S) with S(i, j) = Σ_l min(V[i, l], V[j, l]) through an inverted index of columns."""
    inverted = [np.nonzero(encoding[:, column])[0] for column in range(encoding.shape[1])]
    distance = np.zeros((len(rows), encoding.shape[0]), dtype=np.float64)
    for out_row, i in enumerate(rows):
        overlap = np.zeros(encoding.shape[0], dtype=np.float64)
        for column in np.nonzero(encoding[i])[0]:
            sharing = inverted[column]
            overlap[sharing] += np.minimum(encoding[i, column], encoding[sharing, column])
        distance[out_row] = 1.0 - overlap / (2.0 - overlap)
    return distance


def reference_jaccard(features, k1: int = 30, k2: int = 6, neighbors: np.ndarray | None = None) -> np.ndarray:
    """Dense N×N Jaccard distance for clustering (forward lists of k1 entries, self included).

    ``neighbors`` (N×≥k1) replaces the dense kNN, to compare the later steps on identical lists.
    Negatives are clipped to 0 and the diagonal is 0.
    """
    unit = unit_rows(features)
    ranking = dense_neighbor_lists(unit, k1) if neighbors is None else np.asarray(neighbors)[:, :k1]
    squared = 2.0 - 2.0 * (unit @ unit.T)
    encoding = _encoding(unit, ranking, k1, int(np.around(k1 / 2)) + 1, squared)
    encoding = _expand(encoding, ranking, k2)
    distance = _jaccard(encoding, range(unit.shape[0]))
    distance[distance < 0] = 0.0
    np.fill_diagonal(distance, 0.0)
    return distance.astype(np.float32)


def reference_re_rank(query, gallery, k1: int = 20, k2: int = 6, lambda_value: float = 0.3) -> np.ndarray:
    """Dense Q×G re-ranked distance (Zhong et al.): (1−λ)·Jaccard + λ·row-normalised squared distance.

    Forward lists have k1+1 entries; the squared distance of row i is divided by its row maximum.
    """
    unit = unit_rows(np.concatenate([np.asarray(query, np.float32), np.asarray(gallery, np.float32)]))
    num_query = len(query)
    squared = 2.0 - 2.0 * (unit @ unit.T)
    normalised = squared / squared.max(axis=1, keepdims=True)
    ranking = dense_neighbor_lists(unit, unit.shape[0])
    encoding = _encoding(unit, ranking, k1 + 1, int(np.around(k1 / 2)) + 1, normalised)
    encoding = _expand(encoding, ranking, k2)
    jaccard = _jaccard(encoding, range(num_query))
    final = (1 - lambda_value) * jaccard + lambda_value * normalised[:num_query]
    return final[:, num_query:].astype(np.float32)
