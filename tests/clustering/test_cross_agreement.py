"""Cross-agreement against brute force: python sets of the k nearest others from a full N×N distance."""

import numpy as np
import pytest
import torch

from uda_reid.clustering.agreement import cross_agreement, neighbors_without_self
from uda_reid.clustering.inputs import InvalidFeaturesError, InvalidParameterError
from uda_reid.clustering.knn import knn_search


def brute_force_neighbours(features: np.ndarray, k: int) -> list[set[int]]:
    """The k nearest *other* samples of each row by squared Euclidean distance of unit rows."""
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    distance = ((unit[:, None, :] - unit[None, :, :]) ** 2).sum(axis=2)
    lists = []
    for i in range(len(unit)):
        others = sorted((d, j) for j, d in enumerate(distance[i]) if j != i)
        lists.append({j for _, j in others[:k]})
    return lists


def brute_force_agreement(global_features: np.ndarray, part_features: np.ndarray, k: int) -> np.ndarray:
    global_lists = brute_force_neighbours(global_features, k)
    scores = np.zeros((len(global_features), len(part_features)))
    for n, part in enumerate(part_features):
        for i, part_list in enumerate(brute_force_neighbours(part, k)):
            scores[i, n] = len(global_lists[i] & part_list) / len(global_lists[i] | part_list)
    return scores


@pytest.fixture(scope="module")
def features():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 8))
    global_features = np.repeat(centres, 7, axis=0) + 0.8 * rng.normal(size=(42, 8))
    # part 0 shares the global structure, part 1 partly, part 2 not at all
    part_features = np.stack(
        [
            global_features + 0.3 * rng.normal(size=(42, 8)),
            global_features + 1.5 * rng.normal(size=(42, 8)),
            rng.normal(size=(42, 8)),
        ]
    ).astype(np.float32)
    return global_features.astype(np.float32), part_features


@pytest.mark.parametrize("k", [3, 10])
def test_scores_equal_brute_force_set_overlap(features, k) -> None:
    global_features, part_features = features
    global_lists = knn_search(global_features, 15).indices  # like ClusterResult.neighbors with k1 = 15
    before = (global_lists.copy(), part_features.copy())
    scores = cross_agreement(global_lists, torch.from_numpy(part_features), k)
    expected = brute_force_agreement(global_features, part_features, k)
    assert scores.shape == (42, 3) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    assert scores[:, 0].mean() > scores[:, 2].mean()  # the data really test something
    assert np.array_equal(global_lists, before[0]) and np.array_equal(part_features, before[1])


def test_neighbor_lists_object_and_list_of_parts_are_accepted(features) -> None:
    global_features, part_features = features
    lists = knn_search(global_features, 8)
    from_object = cross_agreement(lists, [part_features[0], part_features[2]], 5)
    from_array = cross_agreement(lists.indices, part_features[[0, 2]], 5)
    np.testing.assert_array_equal(from_object, from_array)
    # a part that is the global feature rescaled has the same neighbourhoods: agreement 1 everywhere
    same = cross_agreement(lists, [3.0 * global_features], 5)
    np.testing.assert_array_equal(same, np.ones((42, 1), dtype=np.float32))


def test_self_is_removed_wherever_it_sits() -> None:
    # row 0 lists itself at column 0, row 1 at column 2 (a tie), row 2 not at all (approximate search)
    indices = np.array(
        [
            [0, 4, 2, 3, 1],
            [4, 3, 1, 0, 2],
            [1, 0, 3, 4, 5],
        ]
    )
    lists = neighbors_without_self(indices, 3)
    np.testing.assert_array_equal(lists, [[4, 2, 3], [4, 3, 0], [1, 0, 3]])


def test_duplicate_images_where_self_is_not_first_match_brute_force() -> None:
    rng = np.random.default_rng(1)
    features = rng.normal(size=(12, 4)).astype(np.float32)
    features[1] = features[0]  # a duplicate image: exact search breaks the tie by the smaller index
    parts = rng.normal(size=(2, 12, 4)).astype(np.float32)
    parts[0, 1] = parts[0, 0]
    global_lists = knn_search(features, 6).indices
    assert global_lists[1, 0] == 0 and global_lists[1, 1] == 1  # self is not at column 0 for row 1
    scores = cross_agreement(global_lists, parts, 4)
    np.testing.assert_allclose(scores, brute_force_agreement(features, parts, 4), rtol=1e-6)


def test_too_few_columns_and_bad_parts_are_named(features) -> None:
    global_features, part_features = features
    lists = knn_search(global_features, 10).indices
    with pytest.raises(InvalidParameterError, match=r"10 columns, but cross-agreement with k=20 needs at least k\+1=21.*k1"):
        cross_agreement(lists, part_features, 20)
    with pytest.raises(InvalidFeaturesError, match=r"part 1 must be N×D with N=42"):
        cross_agreement(lists, [part_features[0], part_features[1][:40]], 5)
    with pytest.raises(InvalidFeaturesError, match=r"P×N×D"):
        cross_agreement(lists, part_features[0], 5)
    with pytest.raises(InvalidParameterError, match="k must be an integer ≥ 1"):
        cross_agreement(lists, part_features, 0)
