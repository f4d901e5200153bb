"""Self-paced reliability (SpCL) on crafted clusterings with hand-checked IoUs and decisions."""

import numpy as np
import pytest

from uda_reid.clustering.reliability import (
    SelfPacedCriterion,
    cluster_reliability,
    unique_outlier_labels,
)

# 16 points: A = 0..3, B = 4..7, C = 8..11 clustered at eps; 12..15 outliers.
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, -1, -1, -1, -1])
# loose (eps + gap) merges B and C; tight (eps − gap) drops point 3 from A.
LOOSE = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, -1, -1, -1, -1])
TIGHT = np.array([0, 0, 0, -1, 1, 1, 1, 1, 2, 2, 2, 2, -1, -1, -1, -1])


def test_unique_outlier_labels_numbers_outliers_after_the_largest_cluster_id() -> None:
    labels = np.array([3, -1, 0, -1])
    assert unique_outlier_labels(labels).tolist() == [3, 4, 0, 5]
    assert labels.tolist() == [3, -1, 0, -1]  # not modified
    assert unique_outlier_labels(np.array([-1, -1, -1])).tolist() == [0, 1, 2]


def test_reliability_of_the_crafted_clustering() -> None:
    independence, compactness = cluster_reliability(LABELS, TIGHT, LOOSE)
    # A keeps its loose cluster (4/4); B and C are half of the merged loose cluster (4/8);
    # each outlier is its own singleton under all three runs (1/1).
    np.testing.assert_allclose(independence, [1] * 4 + [0.5] * 8 + [1] * 4)
    # points 0..2: |A ∩ {0,1,2}| / |A ∪ {0,1,2}| = 3/4; point 3: |A ∩ {3}| / |A| = 1/4
    np.testing.assert_allclose(compactness, [0.75, 0.75, 0.75, 0.25] + [1] * 12)
    assert LABELS[12] == -1 and TIGHT[3] == -1  # inputs untouched


def test_contingency_iou_equals_brute_force_sets() -> None:
    rng = np.random.default_rng(0)
    labels, tight, loose = (rng.integers(-1, 6, size=80) for _ in range(3))
    independence, compactness = cluster_reliability(labels, tight, loose)

    def members(assignment: np.ndarray) -> list[set[int]]:
        singled = unique_outlier_labels(assignment)
        return [set(np.flatnonzero(singled == singled[i]).tolist()) for i in range(len(assignment))]

    own, own_tight, own_loose = members(labels), members(tight), members(loose)
    for i in range(80):
        assert independence[i] == pytest.approx(len(own[i] & own_loose[i]) / len(own[i] | own_loose[i]))
        assert compactness[i] == pytest.approx(len(own[i] & own_tight[i]) / len(own[i] | own_tight[i]))


def test_threshold_is_fixed_by_the_first_call_and_drives_later_decisions() -> None:
    criterion = SelfPacedCriterion()
    first = criterion(LABELS, TIGHT, LOOSE)
    # 1 − independence over A, B, C = [0, .5, .5]; 3 clusters -> index min(2, round(2.7)) = 2 -> 0.5
    assert first.independence_threshold == 0.5
    # all clusters pass; in A only the points with the best compactness (0..2) stay, point 3 leaves
    assert first.labels.tolist() == [0, 0, 0, -1, 1, 1, 1, 1, 2, 2, 2, 2, -1, -1, -1, -1]
    assert (first.num_clusters, first.num_unclustered, first.num_demoted) == (3, 5, 1)

    # next epoch: the loose run swallows outliers 12, 13 into A ∪ B and 14 into C
    loose = np.array([0] * 8 + [1] * 4 + [0, 0, 1, -1])
    second = criterion(LABELS, LABELS, loose)
    # 1 − IoU: A, B = 1 − 4/10 = 0.6 > 0.5 -> demoted; C = 1 − 4/5 = 0.2 -> kept (renumbered 0).
    # A threshold recomputed on this epoch would be 0.6 and would have kept A and B.
    assert criterion.independence_threshold == 0.5
    assert second.labels.tolist() == [-1] * 8 + [0] * 4 + [-1] * 4
    assert (second.num_clusters, second.num_unclustered, second.num_demoted) == (1, 12, 8)


@pytest.mark.parametrize(("num_clusters", "position"), [(20, 18), (25, 22)])
def test_threshold_is_the_value_at_the_rounded_90_percent_position(num_clusters: int, position: int) -> None:
    # cluster k = 2 points; the loose run adds k outliers to it, so 1 − independence = k / (k + 2)
    # increases with k; 20 -> round(18.0) = 18, 25 -> round(22.5) = 22 (numpy rounds halves to even)
    labels, loose = [], []
    for k in range(num_clusters):
        labels += [k, k]
        loose += [k, k]
    for k in range(num_clusters):
        labels += [-1] * k
        loose += [k] * k
    result = SelfPacedCriterion()(np.array(labels), np.array(labels), np.array(loose))
    assert result.independence_threshold == pytest.approx(position / (position + 2))
    kept = np.unique(np.array(labels)[result.labels >= 0])
    assert kept.tolist() == list(range(position + 1))
    assert result.num_clusters == position + 1


def test_all_outliers_give_all_instances_and_leave_the_threshold_unset() -> None:
    criterion = SelfPacedCriterion()
    everything = np.full(6, -1)
    result = criterion(everything, everything, everything)
    assert result.labels.tolist() == [-1] * 6
    assert (result.num_clusters, result.num_unclustered, result.num_demoted) == (0, 6, 0)
    assert criterion.independence_threshold is None
    # the first clustering that has a cluster sets it
    assert criterion(LABELS, TIGHT, LOOSE).independence_threshold == 0.5


def test_single_cluster_keeps_its_most_compact_points() -> None:
    labels = np.zeros(8, dtype=int)
    tight = np.array([0, 0, 0, 0, 0, 1, 1, -1])  # R_comp = 5/8 for 0..4, 2/8 for 5, 6, 1/8 for 7
    result = SelfPacedCriterion()(labels, tight, labels)
    assert result.independence_threshold == 0.0
    assert result.labels.tolist() == [0] * 5 + [-1] * 3
    assert (result.num_clusters, result.num_unclustered, result.num_demoted) == (1, 3, 3)


def test_cluster_reduced_to_one_reliable_point_becomes_an_instance() -> None:
    labels = np.array([0, 0, 0, -1, -1, 1, 1, 1])
    # the tight run pairs points 1 and 2 with outsiders 3 and 4: R_comp = 1/3 for point 0, 1/4 for 1 and 2,
    # so only point 0 passes; a one-point "cluster" is an instance (same loss as the reference's own label)
    tight = np.array([-1, 2, 3, 2, 3, 1, 1, 1])
    result = SelfPacedCriterion()(labels, tight, labels)
    assert result.labels.tolist() == [-1] * 5 + [0] * 3
    assert (result.num_clusters, result.num_unclustered, result.num_demoted) == (1, 5, 3)


def test_state_dict_round_trip_keeps_the_threshold() -> None:
    criterion = SelfPacedCriterion()
    criterion(LABELS, TIGHT, LOOSE)
    resumed = SelfPacedCriterion()
    resumed.load_state_dict(criterion.state_dict())
    assert resumed.independence_threshold == 0.5
    loose = np.array([0] * 8 + [1] * 4 + [0, 0, 1, -1])
    assert resumed(LABELS, LABELS, loose).labels.tolist() == criterion(LABELS, LABELS, loose).labels.tolist()
    with pytest.raises(ValueError, match="independence_threshold"):
        resumed.load_state_dict({"threshold": 0.3})


def test_bad_label_arrays_are_rejected_with_the_argument_name() -> None:
    with pytest.raises(ValueError, match="same points"):
        cluster_reliability(LABELS, TIGHT[:-1], LOOSE)
    with pytest.raises(ValueError, match="labels_loose must be a 1-D integer"):
        cluster_reliability(LABELS, TIGHT, LOOSE.astype(float))
    with pytest.raises(ValueError, match="found -2"):
        unique_outlier_labels(np.array([0, -2]))
