"""The column view (CSC) of sparse rows, built in parallel.

The Jaccard step reads its encoding by columns. scipy's ``tocsc`` is one thread: at a million
samples (35 M entries) it took about a second, serial time that stays when the numba kernels
around it run on 16 cores. Here each task counts, then places, the entries of its own block of
rows; blocks are in row order, so every column lists its rows in increasing order, as ``tocsc``.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

#: bytes of per-task column counters allowed (tasks × columns × 8): fewer tasks on very wide matrices
_COUNTER_BYTES = 256 * 2**20


def csr_columns(indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, n_columns: int, *,
                with_values: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(col_ptr int64, col_rows int32, col_values float32) of a CSR matrix given by its arrays
    (``with_values=False``: the pattern only, ``values`` ignored and col_values empty)."""
    n_rows = len(indptr) - 1
    tasks = int(max(1, min(numba.get_num_threads(), n_rows, _COUNTER_BYTES // (8 * max(n_columns, 1)))))
    counts = np.zeros((tasks, n_columns), dtype=np.int64)
    indptr = np.ascontiguousarray(indptr, dtype=np.int64)
    indices = np.ascontiguousarray(indices, dtype=np.int32)
    _count_columns(indptr, indices, counts)
    col_ptr = np.zeros(n_columns + 1, dtype=np.int64)
    np.cumsum(counts.sum(axis=0), out=col_ptr[1:])
    _starts(counts, col_ptr)
    col_rows = np.empty(col_ptr[-1], dtype=np.int32)
    col_values = np.empty(col_ptr[-1] if with_values else 0, dtype=np.float32)
    values = np.ascontiguousarray(values, dtype=np.float32) if with_values else col_values
    _place(indptr, indices, values, counts, col_rows, col_values, with_values)
    return col_ptr, col_rows, col_values


@njit(cache=True, inline="always")
def _block(task, tasks, n_rows):
    return n_rows * task // tasks, n_rows * (task + 1) // tasks


@njit(cache=True, parallel=True)
def _count_columns(indptr, indices, counts):
    tasks, n_rows = counts.shape[0], indptr.shape[0] - 1
    for t in prange(tasks):
        low, high = _block(t, tasks, n_rows)
        for e in range(indptr[low], indptr[high]):
            counts[t, indices[e]] += 1


@njit(cache=True, parallel=True)
def _starts(counts, col_ptr):
    """counts[t, c] becomes where task t's first entry of column c goes."""
    tasks, n_columns = counts.shape
    for c in prange(n_columns):
        position = col_ptr[c]
        for t in range(tasks):
            count = counts[t, c]
            counts[t, c] = position
            position += count


@njit(cache=True, parallel=True)
def _place(indptr, indices, values, starts, col_rows, col_values, with_values):
    tasks, n_rows = starts.shape[0], indptr.shape[0] - 1
    for t in prange(tasks):
        low, high = _block(t, tasks, n_rows)
        for row in range(low, high):
            for e in range(indptr[row], indptr[row + 1]):
                column = indices[e]
                position = starts[t, column]
                col_rows[position] = row
                if with_values:
                    col_values[position] = values[e]
                starts[t, column] = position + 1
