"""Self-kNN backends against a dense brute force; tie rule; approximate recall; input checks."""

import numpy as np
import pytest
import torch
from clustering_inputs import clustered_features

from uda_reid.clustering.inputs import (
    InvalidFeaturesError,
    InvalidParameterError,
    l2_normalised,
)
from uda_reid.clustering.knn import (
    KNN_BACKENDS,
    exact_knn,
    knn_search,
    resolve_backend,
)
from uda_reid.clustering.knn_gpu import _exact_knn_device
from uda_reid.errors import UdaReidError, UnknownNameError


def brute_force(features, k):
    """Dense similarities, ranked by similarity descending then index ascending."""
    unit = l2_normalised(features).numpy().astype(np.float64)
    similarity = unit @ unit.T
    index = np.broadcast_to(np.arange(len(unit)), similarity.shape)
    order = np.lexsort((index, -similarity), axis=1)[:, :k]
    return order, similarity


def exactly_representable(n=200, dim=12, ones=4, seed=0):
    """Rows with ``ones`` entries of 0.5: unit length, and every dot product is exact in float32,
    so the many equal similarities are genuine ties whatever the summation order."""
    rng = np.random.default_rng(seed)
    features = np.zeros((n, dim), dtype=np.float32)
    for row in features:
        row[rng.choice(dim, ones, replace=False)] = 0.5
    return features


@pytest.mark.parametrize("block_size", [7, 64, 1000])
def test_exact_knn_equals_brute_force_and_breaks_ties_by_index(block_size):
    features = exactly_representable()
    result = exact_knn(features, 10, block_size=block_size, device="cpu")
    expected, similarity = brute_force(features, 10)
    np.testing.assert_array_equal(result.indices, expected)
    np.testing.assert_allclose(result.similarities, np.take_along_axis(similarity, expected, 1), atol=1e-6)


def test_exact_knn_on_clustered_features_with_duplicates():
    features, _ = clustered_features(n=400)
    features[300:310] = features[5]  # ten exact copies of row 5: identical similarity to everything
    result = exact_knn(features, 15, block_size=96, device="cpu", track_farthest=True)
    expected, similarity = brute_force(features, 15)
    np.testing.assert_array_equal(result.indices, expected)
    # the copies and row 5 list each other first, in index order
    np.testing.assert_array_equal(result.indices[5, :11], [5, *range(300, 310)])
    np.testing.assert_array_equal(result.indices[305, :11], [5, *range(300, 310)])
    np.testing.assert_allclose(result.farthest_similarity, similarity.min(axis=1), atol=1e-6)


def test_device_merge_path_equals_cpu_heap_path():
    """The torch-only merge (used on CUDA) must give the same lists as the numba heaps."""
    features, _ = clustered_features(n=300, seed=3)
    features[100:104] = features[7]
    unit = l2_normalised(features)
    indices, sims, farthest = _exact_knn_device(unit, 12, 50, True)
    cpu = exact_knn(features, 12, block_size=50, device="cpu", track_farthest=True)
    np.testing.assert_array_equal(indices, cpu.indices)
    np.testing.assert_allclose(sims, cpu.similarities, atol=1e-6)
    np.testing.assert_allclose(farthest, cpu.farthest_similarity, atol=1e-6)


def test_faiss_flat_matches_exact_on_tie_free_input():
    features, _ = clustered_features(n=300, seed=4)
    exact = knn_search(features, 10, knn="torch")
    flat = knn_search(features, 10, knn="faiss-flat")
    np.testing.assert_array_equal(flat.indices, exact.indices)
    np.testing.assert_allclose(flat.similarities, exact.similarities, atol=1e-5)


@pytest.mark.parametrize("backend", ["faiss-ivf", "faiss-hnsw"])
def test_approximate_backends_reach_high_recall(backend):
    features, _ = clustered_features(n=2000, dim=32, identities=60, seed=5)
    exact = knn_search(features, 20, knn="torch").indices
    approximate = knn_search(features, 20, knn=backend).indices
    recall = np.mean([len(np.intersect1d(a, e)) / 20 for a, e in zip(approximate, exact)])
    assert recall >= 0.95
    assert (approximate >= 0).all()


def test_torch_tensor_input_equals_numpy_and_is_not_modified():
    features, _ = clustered_features(n=200, seed=6)
    tensor = torch.from_numpy(features.copy())
    before = tensor.clone()
    from_tensor = knn_search(tensor, 8, knn="torch")
    from_numpy = knn_search(features, 8, knn="torch")
    np.testing.assert_array_equal(from_tensor.indices, from_numpy.indices)
    assert torch.equal(tensor, before)


def test_auto_backend_uses_exact_search_for_small_inputs_and_ivf_for_huge_ones():
    assert resolve_backend("auto", 10_000, 2048) == "torch"
    if not torch.cuda.is_available():
        assert resolve_backend("auto", 1_000_000, 256) == "faiss-ivf"
    assert set(KNN_BACKENDS.names()) == {"torch", "faiss-flat", "faiss-ivf", "faiss-hnsw"}


def test_unknown_backend_lists_known_names():
    features, _ = clustered_features(n=50)
    with pytest.raises(UnknownNameError, match="--knn.*faiss-flat"):
        knn_search(features, 5, knn="annoy")


def test_too_few_samples_and_bad_k_are_reported():
    features, _ = clustered_features(n=10)
    with pytest.raises(InvalidFeaturesError, match="k=10 needs more than 10 samples; received N=10"):
        exact_knn(features, 10)
    with pytest.raises(InvalidParameterError, match="k must be an integer ≥ 1; received 0"):
        exact_knn(features, 0)
    assert issubclass(InvalidFeaturesError, UdaReidError) and issubclass(InvalidFeaturesError, ValueError)


def test_neighbor_descent_repairs_damaged_lists():
    """Lists with half their entries replaced at random get their true neighbours back, stay sorted
    by the tie rule, carry exact similarities and hold no duplicates."""
    from uda_reid.clustering.knn import refine_neighbor_lists

    features, _ = clustered_features(n=600, identities=30, noise=0.5, seed=7)
    unit = l2_normalised(features).numpy()
    exact = exact_knn(features, 12, device="cpu")
    rng = np.random.default_rng(0)
    damaged = exact.indices.copy()
    damaged[:, 6:] = rng.integers(0, 600, (600, 6))
    damaged_sims = np.einsum("nd,nkd->nk", unit, unit[damaged])
    order = np.lexsort((damaged, -damaged_sims), axis=1)
    damaged, damaged_sims = np.take_along_axis(damaged, order, 1), np.take_along_axis(damaged_sims, order, 1)
    repaired, repaired_sims = refine_neighbor_lists(unit, damaged, damaged_sims, passes=2)

    def recall(lists):
        return np.mean([len(np.intersect1d(a, b)) / 12 for a, b in zip(lists, exact.indices)])

    assert recall(damaged) < 0.65 and recall(repaired) > 0.98
    unique_rows = np.array([len(np.unique(row)) == 12 for row in damaged])
    assert all(len(np.unique(row)) == 12 for row in repaired[unique_rows])
    np.testing.assert_allclose(repaired_sims, np.einsum("nd,nkd->nk", unit, unit[repaired]), atol=1e-5)
    assert np.all(np.diff(repaired_sims, axis=1) <= 1e-6)
