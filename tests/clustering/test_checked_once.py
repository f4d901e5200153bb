"""Features are checked and L2-normalised once per call of an entry point of the clustering stage,
however many steps (kNN, Jaccard, clusterer) they pass through, and the results are those of the
steps called one by one on the raw features (each checking them again, as the stage used to)."""

import numpy as np
import pytest
import torch
from clustering_inputs import clustered_features

from uda_reid.clustering import (
    DBSCANClusterer,
    HDBSCANClusterer,
    InvalidFeaturesError,
    KMeansClusterer,
    cluster_stage,
    inputs,
    jaccard_distance,
    jaccard_from_neighbors,
    knn_search,
    to_dense,
)
from uda_reid.clustering.inputs import unit_features
from uda_reid.clustering.knn import exact_knn, faiss_flat_knn, faiss_ivf_knn


@pytest.fixture
def checks(monkeypatch):
    """Calls of the validation (``as_float32_features``) and of the normalisation (``l2_normalised``)."""
    calls = {"validate": 0, "normalise": 0}

    def counting(kind, function):
        def counted(*args, **kwargs):
            calls[kind] += 1
            return function(*args, **kwargs)

        return counted

    monkeypatch.setattr(inputs, "as_float32_features", counting("validate", inputs.as_float32_features))
    monkeypatch.setattr(inputs, "l2_normalised", counting("normalise", inputs.l2_normalised))
    return calls


ONCE = {"validate": 1, "normalise": 1}


def raw_features():
    """float64 rows of length ≠ 1 with duplicates: converting and normalising have work to do."""
    features, _ = clustered_features(n=400, identities=20, noise=0.6, seed=11)
    features[300:306] = features[7]
    return features.astype(np.float64) * 3


def assert_same_csr(a, b):
    for part in ("indptr", "indices", "data"):
        np.testing.assert_array_equal(getattr(a, part), getattr(b, part))


@pytest.mark.parametrize(
    "clusterer, options, knn",
    [("dbscan", {"eps": 0.5}, "torch"), ("dbscan", {"eps": 0.5}, "faiss-flat"), ("hdbscan", None, "torch")],
)
@pytest.mark.parametrize("as_tensor", [False, True])
def test_cluster_stage_checks_once_and_equals_the_steps_run_one_by_one(
    checks, reference, clusterer, options, knn, as_tensor
):
    raw = raw_features()
    features = torch.from_numpy(raw) if as_tensor else raw
    result = cluster_stage(features, clusterer=clusterer, clusterer_options=options, k1=20, k2=6, knn=knn)
    assert checks == ONCE
    limit = 0.5 if clusterer == "dbscan" else None
    lists = knn_search(features, 20, knn=knn)
    distance = jaccard_from_neighbors(features, lists.indices, 20, 6, max_distance=limit)
    assert checks == {"validate": 3, "normalise": 3}  # each step called on its own checks again
    np.testing.assert_array_equal(result.neighbors.indices, lists.indices)
    np.testing.assert_array_equal(result.neighbors.similarities, lists.similarities)
    assert_same_csr(result.distance, distance)
    model = DBSCANClusterer(eps=0.5) if clusterer == "dbscan" else HDBSCANClusterer()
    np.testing.assert_array_equal(result.labels, model.fit_predict(distance))
    if limit is None:
        np.testing.assert_allclose(to_dense(result.distance), reference.reference_jaccard(raw, 20, 6), atol=1e-5)


def test_kmeans_stage_checks_once_also_when_it_estimates_k(checks):
    features = raw_features()
    result = cluster_stage(features, clusterer="kmeans", clusterer_options={"estimate_eps": 0.5})
    assert checks == ONCE  # fit and the Jaccard distance of its k estimate take the checked features
    estimate = DBSCANClusterer(eps=0.5).fit_predict(jaccard_distance(features, 30, 6, max_distance=0.5))
    k = int(estimate.max()) + 1
    assert result.num_clusters == k
    np.testing.assert_array_equal(result.labels, KMeansClusterer(n_clusters=k).fit_predict(features))


def test_jaccard_distance_checks_once_and_equals_the_reference(checks, reference):
    features = raw_features()
    distance = jaccard_distance(features, 20, 6)
    assert checks == ONCE
    np.testing.assert_allclose(to_dense(distance), reference.reference_jaccard(features, 20, 6), atol=1e-5)
    cut = jaccard_distance(torch.from_numpy(features), 20, 6, max_distance=0.7)
    assert checks == {"validate": 2, "normalise": 2}
    dense = to_dense(distance)
    np.testing.assert_array_equal(to_dense(cut), np.where(dense <= 0.7, dense, 1.0))


def test_checked_features_are_taken_as_they_are(checks):
    unit = unit_features(raw_features())
    assert checks == ONCE and unit_features(unit) is unit
    knn_search(unit, 10)
    exact_knn(unit, 10, device="cpu")
    jaccard_distance(unit, 10, 3)
    cluster_stage(unit, k1=10, k2=3)
    cluster_stage(unit, clusterer="kmeans", clusterer_options={"n_clusters": 5})
    assert checks == ONCE


@pytest.mark.parametrize(
    "call",
    [
        lambda f: cluster_stage(f, k1=5, k2=2),
        lambda f: cluster_stage(f, clusterer="kmeans"),
        lambda f: jaccard_distance(f, 5, 2),
        lambda f: jaccard_from_neighbors(f, np.tile(np.arange(5), (50, 1)), 5, 2),
        lambda f: knn_search(f, 5),
        lambda f: exact_knn(f, 5),
        lambda f: faiss_flat_knn(f, 5),
        lambda f: faiss_ivf_knn(f, 5),
        lambda f: KMeansClusterer(n_clusters=2).fit(f),
    ],
)
def test_every_entry_point_still_checks_raw_features(call):
    features = np.ones((50, 8), dtype=np.float32)
    features[[3, 17]] = np.nan
    with pytest.raises(InvalidFeaturesError, match=r"^features contain NaN or inf values in 2 row\(s\): 3, 17$"):
        call(features)
