"""DBSCAN of a sparse symmetric distance as connected components: scikit-learn's labels, without its
per-sample Python objects.

scikit-learn's DBSCAN on a precomputed sparse matrix turns every row into its own numpy array (a
million objects at LUPerson scale) before its breadth-first search; at N = 1M that took 8–9 s, more
than the GPU kNN it follows. On a symmetric neighbourhood graph its result is fixed by the graph
alone, so scipy's connected components give the same labels:

- a sample's neighbourhood is the stored entries of its row ``<= eps`` (compared as numpy compares
  the array with a Python float, so float32 values against float32(eps)) plus itself when its
  diagonal entry, absent = 0, is ``<= eps``; it is a core sample with ``>= min_samples`` of them;
- core samples joined by a neighbour edge form one cluster, numbered by its lowest core index
  (scikit-learn starts a cluster at each unlabelled core sample, in index order);
- a border sample (not core, next to a core sample) joins the first cluster that reaches it, the
  lowest-numbered one among its core neighbours' (scikit-learn searches one cluster to the end
  before starting the next); the rest are noise (−1).

A matrix whose neighbourhood graph is not symmetric, or that holds duplicate entries, goes to
scikit-learn itself: there the order of the search decides, not the graph (so do values other than
float32, float64 and integers of up to 32 bits).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from numba import njit, prange
from scipy.sparse.csgraph import connected_components
from sklearn.cluster import DBSCAN

from .sparse_columns import csr_columns


def dbscan_labels(distance: sp.csr_matrix | np.ndarray, eps: float, min_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels int64 with −1 = noise, core sample indices) exactly as ``sklearn.cluster.DBSCAN(eps,
    min_samples, metric="precomputed")`` gives them for ``distance``."""
    graph = _neighbourhood_graph(distance, float(eps)) if sp.issparse(distance) else None
    if graph is None:  # dense, duplicated entries or an asymmetric graph: the search order matters
        model = DBSCAN(eps=float(eps), min_samples=int(min_samples), metric="precomputed").fit(distance)
        return model.labels_.astype(np.int64), model.core_sample_indices_
    neighbours, counts = graph
    core = counts >= min_samples
    core_index = np.flatnonzero(core)
    labels = np.full(distance.shape[0], -1, dtype=np.int64)
    if core_index.size == 0:
        return labels, core_index
    # on a symmetric graph the strong components are the connected ones, and scipy finds them
    # without building the transpose it needs for directed=False
    _, component = connected_components(neighbours[core_index][:, core_index], directed=True, connection="strong")
    _, first = np.unique(component, return_index=True)  # position of each component's lowest core index
    label_of_component = np.empty(first.size, dtype=np.int64)
    label_of_component[np.argsort(first, kind="stable")] = np.arange(first.size)
    labels[core_index] = label_of_component[component]
    # border samples: the lowest label among core neighbours, as the largest of (top - label) per row
    border_rows = np.flatnonzero(~core)
    to_core = neighbours[border_rows][:, core_index].tocsr()
    top = first.size
    to_core.data = (top - labels[core_index][to_core.indices]).astype(np.int64)
    best = np.asarray(to_core.max(axis=1).todense()).ravel()  # 0 where no core neighbour
    labels[border_rows[best > 0]] = top - best[best > 0]
    return labels, core_index


def _neighbourhood_graph(distance: sp.spmatrix, eps: float) -> tuple[sp.csr_matrix, np.ndarray] | None:
    """(off-diagonal neighbour pattern, neighbourhood sizes incl. the sample itself), or None when
    the pattern is not symmetric, the matrix holds duplicate entries or values of another type."""
    matrix = distance.tocsr()
    if not matrix.has_canonical_format:
        matrix = matrix.copy()
        matrix.sort_indices()
        if not matrix.has_canonical_format:  # duplicates: scikit-learn counts each one
            return None
    n = matrix.shape[0]
    comparable = _comparable(matrix.data, eps)
    if comparable is None:  # int64, long double, bool: left to scikit-learn
        return None
    data, limit = comparable
    counts = np.zeros(n, dtype=np.int64)
    itself = np.ones(n, dtype=np.bool_)  # an absent diagonal entry reads 0, within any eps > 0
    indptr_in = matrix.indptr.astype(np.int64, copy=False)
    _count_within(indptr_in, matrix.indices, data, limit, counts, itself)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    indices = np.empty(indptr[-1], dtype=np.int32)
    _fill_within(indptr_in, matrix.indices, data, limit, indptr, indices)
    # symmetric iff the column view (the transpose's rows, each in increasing order) is the same pattern
    col_ptr, col_rows, _ = csr_columns(indptr, indices, np.zeros(0, dtype=np.float32), n, with_values=False)
    if not (np.array_equal(indptr, col_ptr) and np.array_equal(indices, col_rows)):
        return None
    neighbours = sp.csr_matrix((np.ones(len(indices), dtype=np.int8), indices, indptr), shape=(n, n))
    return neighbours, counts + itself


def _comparable(data: np.ndarray, eps: float) -> tuple[np.ndarray, np.generic] | None:
    """The values and eps as scikit-learn's ``data <= eps`` compares them (numpy casts the Python
    float to the array's float type; integers compare in float64), or None for other types."""
    if data.dtype in (np.float32, np.float64):
        return data, data.dtype.type(eps)
    if np.issubdtype(data.dtype, np.integer) and data.dtype.itemsize <= 4:  # exact in float64
        return data.astype(np.float64), np.float64(eps)
    return None


@njit(cache=True, parallel=True)
def _count_within(indptr, indices, data, limit, counts, itself):
    """Per row: off-diagonal entries <= limit; whether a stored diagonal entry is <= limit."""
    for row in prange(indptr.shape[0] - 1):
        kept = 0
        for e in range(indptr[row], indptr[row + 1]):
            if indices[e] == row:
                itself[row] = data[e] <= limit
            elif data[e] <= limit:
                kept += 1
        counts[row] = kept


@njit(cache=True, parallel=True)
def _fill_within(indptr, indices, data, limit, out_indptr, out_indices):
    for row in prange(indptr.shape[0] - 1):
        position = out_indptr[row]
        for e in range(indptr[row], indptr[row + 1]):
            if indices[e] != row and data[e] <= limit:
                out_indices[position] = indices[e]
                position += 1
