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
scikit-learn itself: there the order of the search decides, not the graph.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
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
    the pattern is not symmetric or the matrix holds duplicate entries."""
    matrix = distance.tocsr()
    if not matrix.has_canonical_format:
        matrix = matrix.copy()
        matrix.sort_indices()
        if not matrix.has_canonical_format:  # duplicates: scikit-learn counts each one
            return None
    n = matrix.shape[0]
    within = matrix.data <= eps  # numpy's cast of eps to the array's float type, as scikit-learn's
    rows = np.repeat(np.arange(n, dtype=np.int32), np.diff(matrix.indptr))
    off_diagonal = within & (matrix.indices != rows)
    kept_before = np.concatenate(([0], np.cumsum(off_diagonal, dtype=np.int64)))
    indptr, indices = kept_before[matrix.indptr], matrix.indices[off_diagonal]
    # symmetric iff the column view (the transpose's rows, each in increasing order) is the same pattern
    col_ptr, col_rows, _ = csr_columns(indptr, indices, np.zeros(0, dtype=np.float32), n, with_values=False)
    if not (np.array_equal(indptr, col_ptr) and np.array_equal(indices, col_rows)):
        return None
    neighbours = sp.csr_matrix((np.ones(len(indices), dtype=np.int8), indices, indptr), shape=(n, n))
    itself = np.asarray(matrix.diagonal() <= eps)  # an absent diagonal entry reads 0
    return neighbours, np.diff(neighbours.indptr) + itself.astype(np.int64)
