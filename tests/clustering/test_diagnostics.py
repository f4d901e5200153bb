"""Label-free cluster diagnostics against hand computations."""

import numpy as np
import pytest
import torch

from uda_reid.clustering.diagnostics import cluster_diagnostics


def test_figures_of_a_small_clustering_equal_a_hand_computation():
    features = np.array([[1, 0], [0.8, 0.6], [0, 1], [0.6, 0.8], [0, 1], [-1, 0]], dtype=np.float32)
    labels = np.array([0, 0, 1, 1, 1, -1])
    figures = cluster_diagnostics(labels, torch.from_numpy(features))
    assert figures["outlier_share"] == pytest.approx(1 / 6, abs=1e-4)
    assert figures["clusters_of_2"] == 1 and figures["clusters_of_3-4"] == 1 and figures["clusters_of_33+"] == 0
    assert figures["cluster_size_median"] == 2.5
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    centroids = [unit[labels == c].mean(0) / np.linalg.norm(unit[labels == c].mean(0)) for c in (0, 1)]
    intra = np.mean([1 - unit[i] @ centroids[labels[i]] for i in range(5)])
    inter = 1 - centroids[0] @ centroids[1]  # each centroid's nearest other is the other one
    assert figures["intra_distance"] == pytest.approx(intra, abs=1e-4)
    assert figures["inter_distance"] == pytest.approx(inter, abs=1e-4)
    assert "ari_previous" not in figures  # first epoch: nothing to compare with


def test_unchanged_labels_score_one_and_outliers_do_not_count_as_one_cluster():
    features = torch.randn(8, 4)
    labels = np.array([0, 0, 1, 1, -1, -1, 2, 2])
    same = cluster_diagnostics(labels, features, previous_labels=labels.copy())
    assert same["ari_previous"] == 1.0 and same["nmi_previous"] == 1.0
    renamed = cluster_diagnostics(np.array([5, 5, 3, 3, -1, -1, 0, 0]), features, previous_labels=labels)
    assert renamed["ari_previous"] == 1.0  # the same partition under other names
    # the two outliers merged into one cluster now: a change, not "the same cluster -1"
    merged = cluster_diagnostics(np.array([0, 0, 1, 1, 3, 3, 2, 2]), features, previous_labels=labels)
    assert merged["ari_previous"] < 1.0


def test_everything_an_outlier_gives_shares_and_no_distances():
    figures = cluster_diagnostics(np.full(5, -1), torch.randn(5, 3))
    assert figures["outlier_share"] == 1.0 and "intra_distance" not in figures and "cluster_size_median" not in figures
