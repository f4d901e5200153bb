"""One precision at the eps boundary: the sparse Jaccard distance keeps an entry when its stored float32
value is within the limit, the value DBSCAN compares with eps, so pruning and clustering agree on pairs
exactly at eps."""

import numpy as np
from clustering_inputs import clustered_features
from sklearn.cluster import DBSCAN

from uda_reid.clustering.jaccard import jaccard_distance


def test_entries_exactly_at_the_limit_are_kept_as_the_clusterer_counts_them():
    features, _ = clustered_features(n=500, seed=11)
    full = jaccard_distance(features, k1=20, k2=6)  # every entry, float32
    values = np.unique(full.data[(full.data > 0.2) & (full.data < 0.9)])
    rng = np.random.default_rng(0)
    checked = 0
    for limit in rng.choice(values, 8, replace=False):  # each limit is a stored value: pairs exactly at it
        eps = float(limit)
        pruned = jaccard_distance(features, k1=20, k2=6, max_distance=eps)
        wanted = full.copy()
        wanted.data[wanted.data.astype(np.float64) > eps] = 0  # what DBSCAN would not count
        wanted.eliminate_zeros()
        wanted.setdiag(0)
        kept = {(i, j) for i, j in zip(*pruned.nonzero())}
        expected = {(i, j) for i, j in zip(*wanted.nonzero())}
        assert kept == expected, f"eps {eps}: {len(expected - kept)} pairs at the boundary dropped"
        labels = DBSCAN(eps=eps, min_samples=4, metric="precomputed").fit_predict(pruned)
        np.testing.assert_array_equal(labels, DBSCAN(eps=eps, min_samples=4, metric="precomputed").fit_predict(full))
        checked += 1
    assert checked == 8


def test_an_eps_between_float32_values_keeps_what_dbscan_counts():
    """eps 0.6 is no float32: DBSCAN compares float32 distances with float32(eps), so a stored value
    that rounds from just under eps (float32(0.6) > 0.6 in float64) is inside; pruning keeps it too."""
    features, _ = clustered_features(n=500, seed=11)
    full = jaccard_distance(features, k1=20, k2=6)
    values = np.unique(full.data[(full.data > 0.2) & (full.data < 0.9)])
    rng = np.random.default_rng(1)
    checked = 0
    for stored in rng.choice(values, 8, replace=False):
        eps = float(stored) - float(np.spacing(stored)) / 4  # below the stored value in float64, onto it in float32
        assert np.float32(eps) == stored and eps < float(stored)
        pruned = jaccard_distance(features, k1=20, k2=6, max_distance=eps)
        at_eps = {(i, j) for i, j in zip(*full.nonzero()) if full[i, j] == stored}
        kept = {(i, j) for i, j in zip(*pruned.nonzero())}
        assert at_eps and at_eps <= kept, f"eps {eps!r}: pairs stored at float32(eps) dropped"
        labels = DBSCAN(eps=eps, min_samples=4, metric="precomputed").fit_predict(pruned)
        np.testing.assert_array_equal(labels, DBSCAN(eps=eps, min_samples=4, metric="precomputed").fit_predict(full))
        checked += 1
    assert checked == 8
