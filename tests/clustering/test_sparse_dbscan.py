"""The connected-components DBSCAN gives scikit-learn's labels and core samples on sparse distances:
ties at eps, border samples next to several clusters, absent or non-zero diagonals, both float
types, and asymmetric or duplicated matrices (which go to scikit-learn itself)."""

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.cluster import DBSCAN

from uda_reid.clustering.sparse_dbscan import dbscan_labels


def symmetric_distance(n: int, per_row: int, seed: int, dtype=np.float32, levels: int = 0) -> sp.csr_matrix:
    """Random symmetric sparse distance; ``levels`` > 0 draws values from that many steps (many ties)."""
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(n), per_row)
    inside = rng.random(rows.size) < 0.97  # mostly partners within groups of 8: many clusters, borders, noise
    cols = np.where(inside, rows // 8 * 8 + rng.integers(0, 8, rows.size), rng.integers(0, n, rows.size)) % n
    values = rng.integers(1, levels + 1, rows.size) / levels if levels else rng.random(rows.size)
    upper = sp.coo_matrix((values, (np.minimum(rows, cols), np.maximum(rows, cols))), shape=(n, n)).tocsr()
    upper.sum_duplicates()
    upper.setdiag(0)
    upper.eliminate_zeros()
    matrix = (upper + upper.T).tocsr().astype(dtype)
    matrix.setdiag(0)  # stored zero diagonal, as the Jaccard distance keeps it
    return matrix


def assert_same_as_sklearn(matrix, eps, min_samples):
    model = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit(matrix)
    labels, core = dbscan_labels(matrix, eps, min_samples)
    np.testing.assert_array_equal(labels, model.labels_)
    np.testing.assert_array_equal(core, model.core_sample_indices_)
    return labels


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("min_samples", [1, 2, 4, 7])
def test_labels_and_core_samples_equal_sklearn(seed, min_samples):
    matrix = symmetric_distance(600, 6, seed)
    for eps in (0.05, 0.2, 0.5, 0.9):
        labels = assert_same_as_sklearn(matrix, eps, min_samples)
        if eps == 0.5 and min_samples == 4:  # the case the loop runs: the graph has all three kinds
            _, core = dbscan_labels(matrix, eps, min_samples)
            border = (labels >= 0) & ~np.isin(np.arange(600), core)
            assert len(set(labels)) > 10 and border.sum() > 10 and (labels == -1).sum() > 10


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ties_at_eps_count_as_sklearn_counts_them(dtype):
    matrix = symmetric_distance(800, 5, seed=3, dtype=dtype, levels=10)  # values k / 10: many exactly at eps
    for eps in (0.3, 0.5, 0.6, 0.6 - 1e-9):  # 0.6 is no float32: float32(0.6) > 0.6 still counts
        labels = assert_same_as_sklearn(matrix, eps, 4)
    assert len(set(labels)) > 5


def test_border_samples_next_to_several_clusters_take_the_lowest_numbered():
    # two core cliques {5..9} and {0..4} (numbered by lowest index: 0..4 is cluster 0) and samples 10, 11
    # next to one core of each, too few neighbours to be core themselves
    n = 12
    dense = np.ones((n, n))
    for clique in (range(0, 5), range(5, 10)):
        for i in clique:
            for j in clique:
                dense[i, j] = 0.1
    for border, (a, b) in ((10, (7, 2)), (11, (4, 9))):
        dense[border, [a, b]] = dense[[a, b], border] = 0.2
    np.fill_diagonal(dense, 0)
    matrix = sp.csr_matrix(np.where(dense < 1, dense, 0))
    matrix.setdiag(0)
    labels = assert_same_as_sklearn(matrix, 0.3, 4)
    assert labels[10] == labels[11] == 0 and labels[5] == 1


def test_an_absent_or_large_diagonal_is_read_as_sklearn_reads_it():
    matrix = symmetric_distance(500, 6, seed=8, dtype=np.float64)
    absent = matrix.copy()
    absent.setdiag(0)
    absent.eliminate_zeros()  # no stored diagonal: a sample is still its own neighbour
    assert_same_as_sklearn(absent, 0.5, 4)
    large = matrix.tolil()
    for i in range(0, 500, 3):
        large[i, i] = 0.8  # a diagonal above eps: the sample does not count itself
    assert_same_as_sklearn(large.tocsr(), 0.5, 3)


def test_asymmetric_duplicated_and_dense_inputs_are_left_to_sklearn():
    matrix = symmetric_distance(400, 6, seed=9)
    asymmetric = sp.triu(matrix, format="csr")
    asymmetric.setdiag(0)
    assert_same_as_sklearn(asymmetric, 0.5, 2)
    coo = matrix.tocoo()
    duplicated = sp.csr_matrix((np.r_[coo.data, coo.data[:50]], (np.r_[coo.row, coo.row[:50]], np.r_[coo.col, coo.col[:50]])),
                               shape=matrix.shape)
    assert not duplicated.has_canonical_format or duplicated.nnz == matrix.nnz
    assert_same_as_sklearn(duplicated, 0.5, 4)
    assert_same_as_sklearn(matrix.toarray(), 0.5, 4)


def test_no_core_sample_leaves_everything_noise():
    matrix = symmetric_distance(100, 1, seed=1)
    labels = assert_same_as_sklearn(matrix, 0.01, 10)
    assert (labels == -1).all()


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_integer_distances_compare_with_eps_as_sklearn_does(dtype):
    matrix = symmetric_distance(500, 6, seed=12, dtype=np.float64, levels=10)
    matrix.data = np.round(matrix.data * 10)  # distances 1..10, eps 5 and 5.5
    matrix = matrix.astype(dtype)
    for eps in (5.0, 5.5):
        assert_same_as_sklearn(matrix, eps, 4)
