"""k-reciprocal Jaccard distance on sparse rows (step 2 of the clustering stage, docs/methods.md §1).

The public code of SpCL / cluster-contrast / PPLR / CAP builds dense N×N matrices (V, V_qe, the
distance) in Python loops: minutes per epoch and out of memory on MSMT17. Here every object is a
sparse row set of size O(k1·k2) per sample, processed by numba kernels in parallel over rows:

1. k-reciprocal sets R(i, k1) and the half sets R(c, round(k1/2)) from the kNN lists (self included);
2. expansion R*(i) (candidate half sets overlapping R(i, k1) by more than 2/3) and softmax weights
   V[i, j] ∝ exp(−(2 − 2·<f_i, f_j>)) over R*(i);
3. query expansion: V_qe[i] = mean of V over the first k2 neighbours of i;
4. S(i, j) = Σ_l min(V_qe[i, l], V_qe[j, l]) through the column (inverted) index of V_qe, and
   d(i, j) = 1 − S / (2 − S), negatives clipped to 0.

The result is a CSR matrix: a stored entry is the distance of a pair whose encodings share a column,
an absent entry means distance 1.0, and the zero diagonal is stored explicitly (scikit-learn's DBSCAN
counts a point in its own neighbourhood only through a stored entry). Values equal the published
(dense, faiss) implementation to ~1e-6 on float32 features, given the same neighbour lists.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import scipy.sparse as sp
from numba import njit, prange

from .inputs import (
    FeatureArray,
    InvalidFeaturesError,
    InvalidParameterError,
    UnitFeatures,
    check_neighbor_count,
    unit_features,
)
from .knn import knn_search
from .knn_common import dot_rows
from .sparse_columns import csr_columns

# Upper bound on the temporary entries one Jaccard chunk may hold (8 bytes each: 32 MiB).
_CHUNK_ENTRIES = 1 << 22


def half_width(k1: int) -> int:
    """Columns of the neighbour lists used for the half sets: ``int(np.around(k1/2)) + 1``.

    ``round`` rounds halves to even exactly like ``np.around`` (16 for k1 = 30, 11 for k1 = 20).
    """
    return round(k1 / 2) + 1


def _task_count(rows: int) -> int:
    """Parallel tasks (rows are dealt round-robin to them, which balances dense and sparse rows)."""
    return max(1, min(rows, 2 * numba.get_num_threads()))


# ---------------------------------------------------------------------------------------------
# numba kernels. Signatures are fixed (float32 features, int32 indices, int64 row pointers) so each
# kernel compiles once and is cached on disk.


@njit(cache=True, parallel=True)
def _reciprocal_sets(neighbors, width):
    """R(i, width): members j of the first ``width`` neighbours of i that have i among theirs.

    Kept in forward (rank) order, padded with −1. N×width members and N counts.
    """
    n = neighbors.shape[0]
    members = np.full((n, width), -1, dtype=np.int32)
    counts = np.zeros(n, dtype=np.int32)
    for i in prange(n):
        count = 0
        for a in range(width):
            j = neighbors[i, a]
            for b in range(width):
                if neighbors[j, b] == i:
                    members[i, count] = j
                    count += 1
                    break
        counts[i] = count
    return members, counts


@njit(cache=True)
def _expanded_set(i, full_members, full_counts, half_members, half_counts, in_full, in_union, out):
    """Write R*(i) (unsorted, unique) into ``out`` and return its size.

    ``in_full``/``in_union`` are per-task stamp arrays: entry == i + 1 means "member for row i", so
    they never need clearing between rows.
    """
    stamp = i + 1
    n_full = full_counts[i]
    for a in range(n_full):
        in_full[full_members[i, a]] = stamp
    size = 0
    for a in range(n_full):
        j = full_members[i, a]
        if in_union[j] != stamp:
            in_union[j] = stamp
            out[size] = j
            size += 1
    for a in range(n_full):
        candidate = full_members[i, a]
        n_half = half_counts[candidate]
        common = 0
        for b in range(n_half):
            if in_full[half_members[candidate, b]] == stamp:
                common += 1
        if 3 * common > 2 * n_half:  # |R(c, k1/2) ∩ R(i, k1)| > 2/3·|R(c, k1/2)|, exactly
            for b in range(n_half):
                j = half_members[candidate, b]
                if in_union[j] != stamp:
                    in_union[j] = stamp
                    out[size] = j
                    size += 1
    return size


@njit(cache=True, parallel=True)
def _encoding_sizes(full_members, full_counts, half_members, half_counts, n_tasks):
    n = full_members.shape[0]
    sizes = np.zeros(n, dtype=np.int64)
    scratch = full_members.shape[1] * (1 + half_members.shape[1])
    for t in prange(n_tasks):
        in_full = np.zeros(n, dtype=np.int32)
        in_union = np.zeros(n, dtype=np.int32)
        out = np.empty(scratch, dtype=np.int32)
        for i in range(t, n, n_tasks):
            sizes[i] = _expanded_set(i, full_members, full_counts, half_members, half_counts, in_full, in_union, out)
    return sizes


@njit(cache=True, parallel=True)
def _encoding_fill(features, full_members, full_counts, half_members, half_counts, distance_scale, indptr, indices, values, n_tasks):
    """Fill V: sorted R*(i) and softmax(−distance_scale[i]·(2 − 2·<f_i, f_j>)) over it."""
    n = full_members.shape[0]
    scratch = full_members.shape[1] * (1 + half_members.shape[1])
    for t in prange(n_tasks):
        in_full = np.zeros(n, dtype=np.int32)
        in_union = np.zeros(n, dtype=np.int32)
        out = np.empty(scratch, dtype=np.int32)
        dist = np.empty(scratch, dtype=np.float64)
        for i in range(t, n, n_tasks):
            size = _expanded_set(i, full_members, full_counts, half_members, half_counts, in_full, in_union, out)
            members = np.sort(out[:size])
            start = indptr[i]
            smallest = np.inf
            for a in range(size):
                j = members[a]
                indices[start + a] = j
                d = (2.0 - 2.0 * np.float64(dot_rows(features, i, j))) * distance_scale[i]
                dist[a] = d
                smallest = min(smallest, d)
            total = 0.0
            for a in range(size):
                dist[a] = np.exp(smallest - dist[a])
                total += dist[a]
            for a in range(size):
                values[start + a] = dist[a] / total


@njit(cache=True, parallel=True)
def _expansion_sizes(indptr, indices, neighbors, k2, n_tasks):
    n = neighbors.shape[0]
    sizes = np.zeros(n, dtype=np.int64)
    for t in prange(n_tasks):
        seen = np.zeros(n, dtype=np.int32)
        for i in range(t, n, n_tasks):
            count = 0
            for a in range(k2):
                r = neighbors[i, a]
                for e in range(indptr[r], indptr[r + 1]):
                    j = indices[e]
                    if seen[j] != i + 1:
                        seen[j] = i + 1
                        count += 1
            sizes[i] = count
    return sizes


@njit(cache=True, parallel=True)
def _expansion_fill(indptr, indices, values, neighbors, k2, out_indptr, out_indices, out_values, n_tasks):
    """V_qe[i] = mean of V rows of the first k2 neighbours of i (query expansion)."""
    n = neighbors.shape[0]
    for t in prange(n_tasks):
        seen = np.zeros(n, dtype=np.int32)
        total = np.zeros(n, dtype=np.float64)
        for i in range(t, n, n_tasks):
            start = out_indptr[i]
            count = 0
            for a in range(k2):
                r = neighbors[i, a]
                for e in range(indptr[r], indptr[r + 1]):
                    j = indices[e]
                    if seen[j] != i + 1:
                        seen[j] = i + 1
                        total[j] = 0.0
                        out_indices[start + count] = j
                        count += 1
                    total[j] += values[e]
            out_indices[start : start + count].sort()
            for a in range(count):
                out_values[start + a] = total[out_indices[start + a]] / k2


@njit(cache=True, parallel=True)
def _jaccard_chunk(rows, indptr, indices, values, col_ptr, col_rows, col_values, slot_ptr, out_indices, out_values, out_counts, max_distance, clip_negative, zero_diagonal, seen_by_task, overlap_by_task, touched_by_task):
    """Jaccard distances of ``rows`` to every sample sharing an encoding column with them.

    Row q's candidates go to out[slot_ptr[q]:slot_ptr[q+1]] (an upper bound); out_counts[q] says how
    many were kept (d ≤ max_distance, and the diagonal always), sorted by column. The per-task
    scratch rows (T×N) are allocated once per call of :func:`jaccard_rows` and reused by every chunk:
    ``seen`` holds row stamps (i + 1), so nothing needs clearing.
    """
    n_tasks = seen_by_task.shape[0]
    for t in prange(n_tasks):
        seen = seen_by_task[t]
        overlap = overlap_by_task[t]
        touched = touched_by_task[t]
        for q in range(t, rows.shape[0], n_tasks):
            i = rows[q]
            count = 0
            for e in range(indptr[i], indptr[i + 1]):
                column = indices[e]
                weight = values[e]
                for f in range(col_ptr[column], col_ptr[column + 1]):
                    j = col_rows[f]
                    if seen[j] != i + 1:
                        seen[j] = i + 1
                        overlap[j] = 0.0
                        touched[count] = j
                        count += 1
                    overlap[j] += min(weight, col_values[f])
            cut = max_distance < 1.0
            if not cut:  # everything is kept: sort the candidates as they are
                touched[:count].sort()
            slot = slot_ptr[q]
            kept = 0
            for a in range(count):  # with a cut: cut first, then sort only what is kept (a tenth of it at eps)
                j = touched[a]
                s = overlap[j]
                d = 1.0 - s / (2.0 - s)
                if clip_negative and d < 0.0:
                    d = 0.0
                if j == i and zero_diagonal:
                    d = 0.0
                elif np.float32(d) > np.float32(max_distance):
                    # both in float32, as DBSCAN compares the stored float32 values with its eps (numpy casts
                    # a Python float to the array's dtype): with eps 0.6 a stored float32(0.6) is counted
                    continue
                out_indices[slot + kept] = j
                out_values[slot + kept] = d
                kept += 1
            if cut:
                _sort_by_column(out_indices[slot : slot + kept], out_values[slot : slot + kept])
            out_counts[q] = kept


@njit(cache=True, parallel=True)
def _compact(slot_ptr, kept_ptr, out_indices, out_values, indices, values):
    """Each row's kept entries, from the start of its candidate slot to one contiguous array."""
    for q in prange(kept_ptr.shape[0] - 1):
        source = slot_ptr[q]
        for a in range(kept_ptr[q], kept_ptr[q + 1]):
            indices[a] = out_indices[source]
            values[a] = out_values[source]
            source += 1


@njit(cache=True)
def _sort_by_column(columns, distances):
    """Sort one row's entries by column in place: insertion sort for the short rows a cut at eps
    leaves, an argsort for long ones."""
    count = columns.shape[0]
    if count > 48:
        order = np.argsort(columns)
        columns[:] = columns[order]
        distances[:] = distances[order]
        return
    for a in range(1, count):
        column, distance = columns[a], distances[a]
        b = a - 1
        while b >= 0 and columns[b] > column:
            columns[b + 1] = columns[b]
            distances[b + 1] = distances[b]
            b -= 1
        columns[b + 1] = column
        distances[b + 1] = distance


@njit(cache=True, parallel=True)
def _candidate_bounds(rows, indptr, indices, col_ptr, n_total):
    bounds = np.zeros(rows.shape[0], dtype=np.int64)
    for q in prange(rows.shape[0]):
        i = rows[q]
        total = 0
        for e in range(indptr[i], indptr[i + 1]):
            column = indices[e]
            total += col_ptr[column + 1] - col_ptr[column]
        bounds[q] = min(total, n_total)
    return bounds


# ---------------------------------------------------------------------------------------------
# Python drivers


@dataclass(frozen=True)
class SparseRows:
    """CSR pieces of an N-column sparse row set (kept separate from scipy to control dtypes)."""

    indptr: np.ndarray  # int64, len rows+1
    indices: np.ndarray  # int32
    values: np.ndarray  # float32

    def to_csr(self, num_columns: int) -> sp.csr_matrix:
        shape = (len(self.indptr) - 1, num_columns)
        return sp.csr_matrix((self.values, self.indices, self.indptr), shape=shape, copy=False)


def _int32_neighbors(neighbors: np.ndarray, num_samples: int, width: int) -> np.ndarray:
    neighbors = np.asarray(neighbors)
    if neighbors.ndim != 2 or neighbors.shape[0] != num_samples or neighbors.shape[1] < width:
        raise InvalidFeaturesError(
            f"neighbors must be an N×k index array with N={num_samples} and k ≥ {width}; "
            f"received shape {neighbors.shape}"
        )
    if neighbors.size and (neighbors.min() < 0 or neighbors.max() >= num_samples):
        raise InvalidFeaturesError(f"neighbors must hold sample indices in [0, {num_samples}); found out-of-range entries")
    return np.ascontiguousarray(neighbors[:, :width], dtype=np.int32)


def k_reciprocal_encoding(
    unit_features: np.ndarray,
    neighbors: np.ndarray,
    *,
    forward_width: int,
    half: int,
    distance_scale: np.ndarray | None = None,
) -> SparseRows:
    """Sparse V (N×N): softmax weights over the expanded k-reciprocal set R*(i) of each sample.

    ``unit_features``: N×D float32 rows already checked and L2-normalised (not checked again here:
    :meth:`UnitFeatures.numpy <uda_reid.clustering.inputs.UnitFeatures.numpy>`);
    ``neighbors``: N×≥forward_width best-first lists.
    ``forward_width`` is k1 for clustering (self counted) and k1+1 for evaluation re-ranking;
    ``half`` is the width of the half sets. ``distance_scale[i]`` multiplies row i's squared distances
    before the softmax (1 for clustering, 1/row maximum for re-ranking).
    """
    unit_features = np.ascontiguousarray(unit_features, dtype=np.float32)
    n = unit_features.shape[0]
    nbrs = _int32_neighbors(neighbors, n, forward_width)
    full_members, full_counts = _reciprocal_sets(nbrs, forward_width)
    half_members, half_counts = _reciprocal_sets(np.ascontiguousarray(nbrs[:, :half]), half)
    tasks = _task_count(n)
    sizes = _encoding_sizes(full_members, full_counts, half_members, half_counts, tasks)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(sizes, out=indptr[1:])
    indices = np.empty(indptr[-1], dtype=np.int32)
    values = np.empty(indptr[-1], dtype=np.float32)
    scale = np.ones(n, dtype=np.float64) if distance_scale is None else np.asarray(distance_scale, dtype=np.float64)
    _encoding_fill(unit_features, full_members, full_counts, half_members, half_counts, scale, indptr, indices, values, tasks)
    return SparseRows(indptr, indices, values)


def query_expansion(encoding: SparseRows, neighbors: np.ndarray, k2: int) -> SparseRows:
    """V_qe[i] = mean of the V rows of i's first k2 neighbours (self included); k2 = 1 returns V."""
    if k2 == 1:
        return encoding
    n = len(encoding.indptr) - 1
    nbrs = _int32_neighbors(neighbors, n, k2)
    tasks = _task_count(n)
    sizes = _expansion_sizes(encoding.indptr, encoding.indices, nbrs, k2, tasks)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(sizes, out=indptr[1:])
    indices = np.empty(indptr[-1], dtype=np.int32)
    values = np.empty(indptr[-1], dtype=np.float32)
    _expansion_fill(encoding.indptr, encoding.indices, encoding.values, nbrs, k2, indptr, indices, values, tasks)
    return SparseRows(indptr, indices, values)


def jaccard_rows(
    expanded: SparseRows,
    rows: np.ndarray | None = None,
    *,
    max_distance: float = 1.0,
    clip_negative: bool = True,
    zero_diagonal: bool = True,
) -> sp.csr_matrix:
    """Jaccard distance of ``rows`` (default: all) to all samples, as a len(rows)×N CSR matrix.

    Rows are processed in chunks whose candidate buffers stay under ~128 MiB, so memory is the
    output plus a constant.
    """
    n = len(expanded.indptr) - 1
    rows = np.arange(n, dtype=np.int64) if rows is None else np.ascontiguousarray(rows, dtype=np.int64)
    col_ptr, col_rows, col_values = csr_columns(expanded.indptr, expanded.indices, expanded.values, n)
    bounds = _candidate_bounds(rows, expanded.indptr, expanded.indices, col_ptr, n)
    kept_indices: list[np.ndarray] = []
    kept_values: list[np.ndarray] = []
    counts = np.zeros(len(rows), dtype=np.int64)
    tasks = _task_count(len(rows))
    seen_by_task = np.zeros((tasks, n), dtype=np.int32)
    overlap_by_task = np.zeros((tasks, n), dtype=np.float64)
    touched_by_task = np.zeros((tasks, n), dtype=np.int32)
    cumulative = np.cumsum(bounds)
    start = 0
    while start < len(rows):
        before = cumulative[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(cumulative, before + _CHUNK_ENTRIES, side="right")))
        chunk_rows = rows[start:stop]
        slot_ptr = np.zeros(len(chunk_rows) + 1, dtype=np.int64)
        np.cumsum(bounds[start:stop], out=slot_ptr[1:])
        out_indices = np.empty(slot_ptr[-1], dtype=np.int32)
        out_values = np.empty(slot_ptr[-1], dtype=np.float32)
        chunk_counts = np.zeros(len(chunk_rows), dtype=np.int64)
        _jaccard_chunk(
            chunk_rows, expanded.indptr, expanded.indices, expanded.values, col_ptr, col_rows, col_values,
            slot_ptr, out_indices, out_values, chunk_counts, float(max_distance), clip_negative, zero_diagonal,
            seen_by_task, overlap_by_task, touched_by_task,
        )
        kept_ptr = np.zeros(len(chunk_rows) + 1, dtype=np.int64)
        np.cumsum(chunk_counts, out=kept_ptr[1:])
        chunk_indices = np.empty(kept_ptr[-1], dtype=np.int32)
        chunk_values = np.empty(kept_ptr[-1], dtype=np.float32)
        _compact(slot_ptr, kept_ptr, out_indices, out_values, chunk_indices, chunk_values)
        kept_indices.append(chunk_indices)
        kept_values.append(chunk_values)
        counts[start:stop] = chunk_counts
        start = stop
    del col_ptr, col_rows, col_values, seen_by_task, overlap_by_task, touched_by_task
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    # np.empty pages are only resident once written, and each chunk is freed after its copy, so the
    # peak stays near one copy of the output.
    indices = np.empty(indptr[-1], dtype=np.int32)
    values = np.empty(indptr[-1], dtype=np.float32)
    offset = 0
    while kept_indices:
        chunk_indices, chunk_values = kept_indices.pop(0), kept_values.pop(0)
        indices[offset : offset + len(chunk_indices)] = chunk_indices
        values[offset : offset + len(chunk_values)] = chunk_values
        offset += len(chunk_indices)
        del chunk_indices, chunk_values
    return SparseRows(indptr, indices, values).to_csr(n)


def check_jaccard_parameters(num_samples: int, k1: int, k2: int, max_distance: float | None) -> float:
    """Validate k1, k2 and max_distance for N samples; returns the distance cut-off (1.0 = none)."""
    check_neighbor_count(num_samples, k1, option="k1")
    if isinstance(k2, bool) or not isinstance(k2, (int, np.integer)) or not 1 <= k2 <= k1:
        raise InvalidParameterError(f"k2 must be in [1, k1={k1}] (query expansion uses the first k2 of the k1 neighbours); received {k2}")
    if max_distance is None:
        return 1.0
    if isinstance(max_distance, bool) or not (isinstance(max_distance, (int, float)) and 0.0 < float(max_distance) <= 1.0):
        raise InvalidParameterError(f"max_distance must be in (0, 1] (Jaccard distances lie in [0, 1]); received {max_distance!r}")
    return float(max_distance)


def jaccard_from_neighbors(
    features: FeatureArray | UnitFeatures,
    neighbors: np.ndarray,
    k1: int = 30,
    k2: int = 6,
    *,
    max_distance: float | None = None,
) -> sp.csr_matrix:
    """Jaccard distance from given self-kNN lists (N×≥k1, best first, self included).

    Use this to time or reuse the kNN step separately; :func:`jaccard_distance` runs both.
    ``features`` are checked and L2-normalised here unless they come as :class:`UnitFeatures`.
    """
    unit = unit_features(features)
    limit = check_jaccard_parameters(unit.shape[0], k1, k2, max_distance)
    encoding = k_reciprocal_encoding(unit.numpy(), neighbors, forward_width=k1, half=half_width(k1))
    expanded = query_expansion(encoding, neighbors, k2)
    del encoding
    return jaccard_rows(expanded, max_distance=limit, clip_negative=True, zero_diagonal=True)


def jaccard_distance(
    features: FeatureArray | UnitFeatures,
    k1: int = 30,
    k2: int = 6,
    *,
    knn: str = "auto",
    max_distance: float | None = None,
) -> sp.csr_matrix:
    """k-reciprocal Jaccard distance (docs/methods.md §1) of N×D features as an N×N CSR matrix.

    Features are checked and L2-normalised once, here (numpy or torch, any device; not modified;
    :class:`UnitFeatures` are taken as they are), and the kNN and encoding steps reuse the result. A
    stored entry is the distance of a pair whose encodings overlap; absent entries mean 1.0; the
    diagonal is stored as explicit 0. ``max_distance`` in (0, 1] also drops entries above it (the zero diagonal stays):
    clustering with DBSCAN only needs entries ≤ eps, which makes million-sample inputs fit in memory.
    ``knn`` names the kNN backend (see :mod:`uda_reid.clustering.knn`); k1 neighbours are searched
    per sample, self included.
    """
    unit = unit_features(features)
    check_jaccard_parameters(unit.shape[0], k1, k2, max_distance)
    lists = knn_search(unit, k1, knn=knn)
    return jaccard_from_neighbors(unit, lists.indices, k1, k2, max_distance=max_distance)


def to_dense(distance: sp.spmatrix) -> np.ndarray:
    """Dense float32 copy of a sparse Jaccard distance with absent entries set to 1.0 (small N only)."""
    csr = sp.csr_matrix(distance)
    dense = np.ones(csr.shape, dtype=np.float32)
    rows = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))
    dense[rows, csr.indices] = csr.data
    return dense


__all__ = [
    "SparseRows",
    "half_width",
    "jaccard_distance",
    "jaccard_from_neighbors",
    "jaccard_rows",
    "k_reciprocal_encoding",
    "query_expansion",
    "to_dense",
]
