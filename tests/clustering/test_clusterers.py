"""Clusterers: contract over the registry, exact agreement with dense runs, blobs, edge results."""

import hdbscan
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from clustering_inputs import blobs, clustered_features, same_partition
from sklearn.cluster import DBSCAN

from uda_reid.clustering import (
    CLUSTERERS,
    DBSCANClusterer,
    HDBSCANClusterer,
    InvalidDistanceError,
    InvalidParameterError,
    KMeansClusterer,
    cluster_stage,
    jaccard_distance,
    make_clusterer,
    to_dense,
)
from uda_reid.errors import ConfigError, UnknownNameError


def clusterer_input(name, features, k1=20):
    if CLUSTERERS.get(name).input_kind == "features":
        return features
    return jaccard_distance(features, k1, 6)


@pytest.mark.parametrize("name", CLUSTERERS.names())
def test_contract_recovers_blobs_without_modifying_input(name):
    features, truth = blobs()
    data = clusterer_input(name, features)
    before = data.copy()
    model = make_clusterer(name, {"n_clusters": 3} if name == "kmeans" else None)
    labels = model.fit_predict(data)
    assert labels.dtype == np.int64 and labels.shape == (len(truth),)
    assert np.array_equal(labels, model.labels_)
    assert same_partition(labels, truth)
    if sp.issparse(data):
        assert (data != before).nnz == 0
    else:
        np.testing.assert_array_equal(data, before)


@pytest.mark.parametrize("name", CLUSTERERS.names())
def test_contract_parameters_are_keyword_only_and_validated_in_fit(name):
    cls = CLUSTERERS.get(name)
    with pytest.raises(TypeError):
        cls(0.5)  # positional parameters are not accepted
    bad = {"dbscan": {"eps": -1.0}, "hdbscan": {"min_cluster_size": 1}, "kmeans": {"n_clusters": 0}}[name]
    model = cls(**bad)  # construction stores, fit validates (scikit-learn contract)
    features, _ = blobs()
    with pytest.raises(InvalidParameterError, match=next(iter(bad))):
        model.fit(clusterer_input(name, features))


def test_dbscan_on_sparse_equals_dbscan_on_dense():
    features, _ = clustered_features(n=500, noise=1.0, seed=1)
    distance = jaccard_distance(features, 20, 6)
    for eps in (0.4, 0.55, 0.6, 0.7):
        ours = DBSCANClusterer(eps=eps, min_samples=4).fit_predict(distance)
        dense = DBSCAN(eps=eps, min_samples=4, metric="precomputed").fit(to_dense(distance)).labels_
        np.testing.assert_array_equal(ours, dense)
    assert (ours == -1).any() and ours.max() > 5  # a non-trivial case: clusters and outliers


def test_dbscan_on_distance_cut_at_eps_equals_full_distance():
    features, _ = clustered_features(n=500, noise=1.0, seed=2)
    full = DBSCANClusterer().fit_predict(jaccard_distance(features, 20, 6))
    cut = DBSCANClusterer().fit_predict(jaccard_distance(features, 20, 6, max_distance=0.6))
    np.testing.assert_array_equal(full, cut)


@pytest.mark.parametrize("min_samples, min_cluster_size", [(4, 4), (2, 5), (6, 3), (None, 5)])
def test_hdbscan_on_sparse_equals_hdbscan_package_on_dense(min_samples, min_cluster_size):
    features, _ = clustered_features(n=500, noise=1.1, identities=30, seed=3)
    distance = jaccard_distance(features, 20, 6)
    ours = HDBSCANClusterer(min_cluster_size=min_cluster_size, min_samples=min_samples).fit_predict(distance)
    dense = hdbscan.HDBSCAN(
        metric="precomputed", min_cluster_size=min_cluster_size, min_samples=min_samples
    ).fit(to_dense(distance).astype(np.float64)).labels_
    assert same_partition(ours, dense)
    assert (ours >= 0).any()


def test_kmeans_estimates_k_from_density_clusters():
    features, truth = blobs(sizes=(30, 30, 30, 30), seed=4)
    model = KMeansClusterer()
    labels = model.fit_predict(features)
    assert model.n_clusters_ == 4
    assert same_partition(labels, truth)


def test_kmeans_estimate_follows_the_runs_density_settings():
    from uda_reid.config import RunConfig, apply_overrides
    from uda_reid.engine.loop import clusterer_options

    features, _ = blobs(sizes=(30, 30, 30, 30), seed=4)
    strict = KMeansClusterer(estimate_min_samples=40)  # no blob of 30 is dense enough: one cluster
    strict.fit(features)
    assert strict.n_clusters_ == 1
    config = apply_overrides(RunConfig(), {"clustering.clusterer": "kmeans", "clustering.eps": 0.45,
                                           "clustering.k1": 20, "clustering.k2": 4, "clustering.min_samples": 3})
    options = clusterer_options(config)
    assert (options["estimate_eps"], options["estimate_k1"], options["estimate_k2"], options["estimate_min_samples"]) == (
        0.45, 20, 4, 3)


def test_all_outliers_and_single_cluster_are_results_not_errors():
    features, _ = clustered_features(n=200, seed=5)
    distance = jaccard_distance(features, 10, 3)
    everything_outlier = cluster_stage(features, k1=10, k2=3, clusterer_options={"min_samples": 500})
    assert everything_outlier.num_clusters == 0 and everything_outlier.num_outliers == 200
    np.testing.assert_array_equal(everything_outlier.labels, -1)
    one = DBSCANClusterer(eps=1.0, min_samples=1).fit_predict(np.ones((50, 50)) - np.eye(50))
    np.testing.assert_array_equal(one, 0)
    single = KMeansClusterer(n_clusters=1).fit_predict(features)
    np.testing.assert_array_equal(single, 0)
    assert (HDBSCANClusterer(min_cluster_size=300).fit_predict(distance) == -1).all()


def test_cluster_stage_reports_counts_timings_and_leaves_input_alone():
    features, truth = clustered_features(n=400, identities=20, noise=0.5, seed=6)
    tensor = torch.from_numpy(features.copy())
    result = cluster_stage(tensor, k1=20, k2=6)
    assert torch.equal(tensor, torch.from_numpy(features))
    assert set(result.timings) == {"knn", "jaccard", "cluster"}
    assert result.num_clusters == len(np.unique(result.labels[result.labels >= 0]))
    assert result.num_outliers == int((result.labels == -1).sum())
    assert result.cluster_sizes.sum() + result.num_outliers == 400
    assert same_partition(result.labels, truth)
    assert result.distance.data.max() <= 0.6  # auto max_distance = DBSCAN eps
    loose = cluster_stage(features, k1=20, k2=6, max_distance=0.62)
    np.testing.assert_array_equal(loose.labels, result.labels)
    assert loose.distance.nnz >= result.distance.nnz
    kmeans = cluster_stage(features, clusterer="kmeans", clusterer_options={"n_clusters": 20})
    assert kmeans.distance is None and set(kmeans.timings) == {"cluster"} and kmeans.num_outliers == 0


def test_names_and_options_are_checked():
    with pytest.raises(UnknownNameError, match="--clusterer.*dbscan, hdbscan, kmeans"):
        make_clusterer("optics")
    with pytest.raises(ConfigError, match="unknown option\\(s\\) \\['epsilon'\\] for --clusterer dbscan; known: eps, min_samples"):
        make_clusterer("dbscan", {"epsilon": 0.5})


@pytest.mark.parametrize(
    "distance, message",
    [
        (np.ones((3, 4)), "square N×N"),
        (np.full((3, 3), np.nan), "NaN or inf"),
        (-np.ones((3, 3)), "≥ 0"),
        ([[0.0]], "scipy sparse matrix or numpy array"),
    ],
)
def test_bad_distance_matrices(distance, message):
    with pytest.raises(InvalidDistanceError, match=message):
        DBSCANClusterer().fit(distance)


def test_hdbscan_rejects_sparse_entries_above_one():
    with pytest.raises(InvalidDistanceError, match="\\[0, 1\\]"):
        HDBSCANClusterer().fit(sp.csr_matrix(np.full((4, 4), 2.0)))
