"""Sparse Jaccard distance against the dense brute force of benchmarks/reference_jaccard.py."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from clustering_inputs import clustered_features

from uda_reid.clustering import (
    InvalidFeaturesError,
    InvalidParameterError,
    jaccard_distance,
    jaccard_from_neighbors,
    knn_search,
    to_dense,
)
from uda_reid.clustering.jaccard import half_width
from uda_reid.errors import UdaReidError


@pytest.mark.parametrize(
    "k1, k2, seed",
    [(30, 6, 0), (20, 6, 1), (25, 1, 2), (13, 3, 3), (4, 4, 4)],
)
def test_equals_dense_reference_on_clustered_features(reference, k1, k2, seed):
    features, _ = clustered_features(n=360, seed=seed)
    ours = jaccard_distance(features, k1, k2)
    dense = reference.reference_jaccard(features, k1, k2)
    np.testing.assert_allclose(to_dense(ours), dense, atol=1e-5, rtol=0)
    assert ours.nnz < 0.8 * 360 * 360  # it is sparse: most pairs share no encoding column


def test_equals_dense_reference_on_unstructured_random_features(reference):
    features = np.random.default_rng(7).standard_normal((250, 8)).astype(np.float32)
    np.testing.assert_allclose(to_dense(jaccard_distance(features, 20, 6)), reference.reference_jaccard(features, 20, 6), atol=1e-5)


def test_duplicate_rows_give_deterministic_ties_and_match_reference(reference):
    features, _ = clustered_features(n=300, seed=8)
    features[200:212] = features[3]  # 12 identical samples: ties inside every forward list
    first = jaccard_distance(features, 20, 6)
    small_blocks = knn_search(torch.from_numpy(features), 20, knn="torch", block_size=7).indices
    second = jaccard_from_neighbors(features, small_blocks, 20, 6)
    assert (first != second).nnz == 0  # same tie order whatever the block structure
    np.testing.assert_allclose(to_dense(first), reference.reference_jaccard(features, 20, 6), atol=1e-5)
    # identical samples have identical encodings: distance 0, stored explicitly
    assert first[3, 205] == 0 and 205 in first[3].indices


def test_given_neighbor_lists_are_used_as_is(reference):
    features, _ = clustered_features(n=200, seed=9)
    lists = reference.dense_neighbor_lists(reference.unit_rows(features), 12)
    ours = jaccard_from_neighbors(features, lists, 12, 4)
    np.testing.assert_allclose(to_dense(ours), reference.reference_jaccard(features, 12, 4, neighbors=lists), atol=1e-5)


def test_symmetric_in_range_with_explicit_zero_diagonal():
    features, _ = clustered_features(n=400, seed=10)
    distance = jaccard_distance(features, 30, 6)
    assert isinstance(distance, sp.csr_matrix) and distance.has_sorted_indices
    assert (distance != distance.T).nnz == 0  # exactly symmetric
    assert distance.data.min() >= 0 and distance.data.max() <= 1
    diagonal_positions = [np.searchsorted(distance.indices[a:b], i) + a for i, (a, b) in enumerate(zip(distance.indptr[:-1], distance.indptr[1:]))]
    assert np.array_equal(distance.indices[diagonal_positions], np.arange(400))
    assert np.all(distance.data[diagonal_positions] == 0)


def test_absent_entries_mean_distance_one():
    features, ids = clustered_features(n=300, identities=30, noise=0.3, seed=11)
    distance = jaccard_distance(features, 10, 3)
    dense = to_dense(distance)
    absent = np.ones(distance.shape, dtype=bool)
    absent[np.repeat(np.arange(300), np.diff(distance.indptr)), distance.indices] = False
    assert absent.any() and np.all(dense[absent] == 1.0)
    # different identities with tight clusters share no encoding column
    assert np.all(dense[ids[:, None] != ids[None, :]] > 0.9)


@pytest.mark.parametrize("max_distance", [0.3, 0.6, 1.0])
def test_max_distance_keeps_exactly_the_small_entries(max_distance):
    features, _ = clustered_features(n=300, seed=12)
    full = jaccard_distance(features, 20, 6)
    cut = jaccard_distance(features, 20, 6, max_distance=max_distance)
    expected = full.copy()
    expected.data[expected.data > max_distance] = np.inf
    expected.setdiag(0)
    expected = expected.tocoo()
    keep = np.isfinite(expected.data)
    cut_coo = cut.tocoo()
    assert set(zip(cut_coo.row.tolist(), cut_coo.col.tolist())) == set(zip(expected.row[keep].tolist(), expected.col[keep].tolist()))
    np.testing.assert_array_equal(cut.diagonal(), 0)
    assert cut.data.max() <= max_distance


def test_half_width_follows_numpy_around():
    assert [half_width(k) for k in (30, 20, 25, 27, 1)] == [int(np.around(k / 2)) + 1 for k in (30, 20, 25, 27, 1)]
    assert half_width(30) == 16 and half_width(20) == 11


def test_features_are_not_modified():
    features, _ = clustered_features(n=150, seed=13)
    features *= 3.0  # not unit length: normalised inside, on a copy
    before = features.copy()
    tensor = torch.from_numpy(features.copy())
    jaccard_distance(features, 10, 3)
    jaccard_distance(tensor, 10, 3)
    np.testing.assert_array_equal(features, before)
    np.testing.assert_array_equal(tensor.numpy(), before)


def test_nan_and_inf_rows_are_named():
    features, _ = clustered_features(n=100)
    features[[4, 17]] = np.nan
    features[42, 3] = np.inf
    with pytest.raises(InvalidFeaturesError, match=r"NaN or inf values in 3 row\(s\): 4, 17, 42"):
        jaccard_distance(features, 10, 3)


def test_zero_rows_are_named():
    features, _ = clustered_features(n=100)
    features[9] = 0
    with pytest.raises(InvalidFeaturesError, match=r"zero length .* 1 row\(s\): 9"):
        jaccard_distance(features, 10, 3)


@pytest.mark.parametrize(
    "features, message",
    [
        (np.zeros((0, 8), np.float32), "empty: received shape \\(0, 8\\)"),
        (np.ones((50, 8), np.int64), "floating-point .* received dtype int64"),
        (np.ones(50, np.float32), "2-D .* received shape \\(50,\\)"),
        (np.ones((5, 10, 2), np.float32), "2-D .* received shape \\(5, 10, 2\\)"),
        ([[1.0, 2.0]], "numpy array or torch tensor .* received list"),
    ],
)
def test_malformed_features_are_rejected(features, message):
    with pytest.raises(InvalidFeaturesError, match=message):
        jaccard_distance(features, 3, 1)


def test_too_few_samples_for_k1():
    features, _ = clustered_features(n=30)
    with pytest.raises(InvalidFeaturesError, match="k1=30 needs more than 30 samples; received N=30"):
        jaccard_distance(features, 30, 6)


@pytest.mark.parametrize("max_distance", [0, -0.1, 1.5, float("nan"), "0.5"])
def test_max_distance_outside_unit_interval(max_distance):
    features, _ = clustered_features(n=50)
    with pytest.raises(InvalidParameterError, match="max_distance must be in \\(0, 1\\]"):
        jaccard_distance(features, 10, 3, max_distance=max_distance)


def test_k2_larger_than_k1():
    features, _ = clustered_features(n=50)
    with pytest.raises(InvalidParameterError, match=r"k2 must be in \[1, k1=10\] .*; received 11"):
        jaccard_distance(features, 10, 11)
    assert issubclass(InvalidParameterError, UdaReidError) and issubclass(InvalidParameterError, ValueError)


def test_out_of_range_neighbor_lists():
    features, _ = clustered_features(n=40)
    lists = knn_search(features, 5, knn="torch").indices.copy()
    lists[3, 2] = 40
    with pytest.raises(InvalidFeaturesError, match="neighbors must hold sample indices in \\[0, 40\\)"):
        jaccard_from_neighbors(features, lists, 5, 2)
