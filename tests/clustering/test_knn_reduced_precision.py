"""Exact kNN at bf16 speed: candidates from the bf16 product, lists re-scored in float32 and certified
by the rounding bound, so the lists equal those of the float32 product, near-ties and duplicates too."""

import numpy as np
import pytest
from clustering_inputs import clustered_features
from clustering_stage import synthetic_features

from uda_reid.clustering.inputs import InvalidParameterError
from uda_reid.clustering.knn import exact_knn


def both_products(features, k, **options):
    exact = exact_knn(features, k, device="cpu", product="float32", **options)
    reduced = exact_knn(features, k, device="cpu", product="bf16", **options)
    assert (exact.product, reduced.product) == ("float32", "bf16")
    return exact, reduced


def test_bf16_candidates_give_the_float32_lists_on_benchmark_features():
    features, _ = synthetic_features(3000, 256, seed=1)
    exact, reduced = both_products(features, 30, block_size=700)
    np.testing.assert_array_equal(reduced.indices, exact.indices)
    np.testing.assert_array_equal(reduced.similarities, exact.similarities)
    assert reduced.rechecked_rows < 0.05 * len(features)  # the default margin (k) almost always suffices


def test_near_ties_inside_the_rounding_bound_are_rechecked_and_still_exact():
    rng = np.random.default_rng(2)
    centre = rng.standard_normal(64).astype(np.float32)
    # 400 rows within 1e-4 of one point: their similarities differ below bf16's resolution
    near = centre + 1e-4 * rng.standard_normal((400, 64)).astype(np.float32)
    features = np.concatenate([near, rng.standard_normal((600, 64)).astype(np.float32)])
    exact, reduced = both_products(features, 20, block_size=256)
    assert reduced.rechecked_rows >= 400  # the bf16 margin could not decide them
    np.testing.assert_array_equal(reduced.indices, exact.indices)


def test_duplicates_cut_at_rank_k_keep_index_order_with_both_products():
    features, _ = clustered_features(n=800, seed=6)
    features[200:240] = features[9]  # 41 identical rows, k = 30: the tie at rank k decides by index
    exact, reduced = both_products(features, 30, block_size=128)
    for lists in (exact, reduced):
        np.testing.assert_array_equal(lists.indices[9], [9, *range(200, 229)])
        np.testing.assert_array_equal(lists.indices[239], [9, *range(200, 229)])
    np.testing.assert_array_equal(reduced.indices, exact.indices)


def test_without_a_margin_every_row_is_rechecked_and_exact():
    features, _ = clustered_features(n=500, seed=7)
    exact = exact_knn(features, 15, device="cpu", product="float32")
    reduced = exact_knn(features, 15, device="cpu", product="bf16", margin=0)
    assert reduced.rechecked_rows > 0.9 * len(features)
    np.testing.assert_array_equal(reduced.indices, exact.indices)


def test_track_farthest_needs_the_float32_product():
    features, _ = clustered_features(n=100, seed=8)
    with pytest.raises(InvalidParameterError, match="track_farthest needs product='float32'"):
        exact_knn(features, 5, device="cpu", product="bf16", track_farthest=True)
    assert exact_knn(features, 5, device="cpu", track_farthest=True).product == "float32"  # auto picks it
