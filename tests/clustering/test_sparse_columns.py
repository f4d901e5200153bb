"""The parallel column view equals scipy's tocsc: pointers, rows in increasing order, values."""

import numpy as np
import pytest
import scipy.sparse as sp

from uda_reid.clustering import sparse_columns
from uda_reid.clustering.sparse_columns import csr_columns


@pytest.mark.parametrize("shape,density", [((500, 500), 0.02), ((300, 7000), 0.01), ((5, 3), 0.0), ((1, 40), 0.5)])
def test_the_column_view_equals_scipys(shape, density):
    matrix = sp.random(*shape, density=density, format="csr", dtype=np.float32, random_state=0)
    expected = matrix.tocsc()
    expected.sort_indices()
    col_ptr, col_rows, col_values = csr_columns(matrix.indptr, matrix.indices, matrix.data, shape[1])
    np.testing.assert_array_equal(col_ptr, expected.indptr)
    np.testing.assert_array_equal(col_rows, expected.indices)
    np.testing.assert_array_equal(col_values, expected.data)
    assert col_ptr.dtype == np.int64 and col_rows.dtype == np.int32 and col_values.dtype == np.float32


def test_fewer_tasks_than_threads_when_the_counters_would_not_fit(monkeypatch):
    monkeypatch.setattr(sparse_columns, "_COUNTER_BYTES", 8 * 1000)  # one task's counters for 1000 columns
    matrix = sp.random(400, 1000, density=0.05, format="csr", dtype=np.float32, random_state=1)
    col_ptr, col_rows, col_values = csr_columns(matrix.indptr, matrix.indices, matrix.data, 1000)
    expected = matrix.tocsc()
    np.testing.assert_array_equal(col_rows, expected.indices)
    np.testing.assert_array_equal(col_values, expected.data)
