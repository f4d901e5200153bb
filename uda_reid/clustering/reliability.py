"""SpCL's self-paced cluster reliability: keep only clusters that survive a change of DBSCAN's eps.

The same Jaccard distance is clustered three times (eps, eps − 0.02 "tight", eps + 0.02 "loose"). A
cluster that merges with others when eps grows is not independent; a point that leaves its cluster when
eps shrinks sits on the cluster's rim. With I(i) the members of i's cluster (outliers are singletons):

* R_indep(i) = IoU(I(i), I_loose(i)), R_comp(i) = IoU(I(i), I_tight(i));
* a cluster's independence is the max of R_indep over its members;
* a point stays clustered iff its cluster's 1 − independence is at most the threshold fixed at the
  first epoch, and its R_comp equals the cluster's max R_comp. Everything else trains as an instance.

Intersections come from the contingency table of label pairs (|I(i) ∩ I_loose(i)| = number of points
with both i's label and i's loose label), so memory is O(N), not the reference code's N×N matrices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .inputs import InvalidParameterError


def _as_labels(labels: Any, name: str) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"{name} must be a 1-D integer label array (−1 = outlier), got shape {array.shape} dtype {array.dtype}"
        )
    if array.size and array.min() < -1:
        raise ValueError(f"{name} must hold cluster ids >= 0 or −1 for outliers, found {array.min()}")
    return array.astype(np.int64)


def unique_outlier_labels(labels: Any) -> np.ndarray:
    """Give each −1 its own label max+1, max+2, … in order of appearance; clusters keep their ids.

    ``N`` labels -> ``N`` labels without −1 (a new array). With no cluster at all the outliers are
    numbered 0..N−1. This is how SpCL turns DBSCAN outliers into un-clustered instances.
    """
    result = _as_labels(labels, "labels").copy()
    outliers = result == -1
    result[outliers] = result.max(initial=-1) + 1 + np.arange(int(outliers.sum()))
    return result


def _member_counts(labels: np.ndarray) -> np.ndarray:
    """``N`` -> ``N``: size of each point's cluster."""
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return counts[inverse.reshape(-1)]


def _intersection_over_union(labels: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Per point, IoU of its cluster under ``labels`` and under ``other`` (both without −1): ``N`` -> ``N``."""
    _, first = np.unique(labels, return_inverse=True)
    _, second = np.unique(other, return_inverse=True)
    pair_keys = first.reshape(-1) * (int(second.max(initial=0)) + 1) + second.reshape(-1)
    intersection = _member_counts(pair_keys)  # points sharing both of i's labels = |I(i) ∩ I_other(i)|
    union = _member_counts(labels) + _member_counts(other) - intersection
    return intersection / union


def cluster_reliability(labels: Any, labels_tight: Any, labels_loose: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-point (R_indep, R_comp), each ``N`` float64 in (0, 1], from three labelings of the same ``N`` points.

    −1 entries are outliers and become singletons first (:func:`unique_outlier_labels`). Inputs are
    not modified.
    """
    labels = unique_outlier_labels(labels)
    tight = unique_outlier_labels(_as_labels(labels_tight, "labels_tight"))
    loose = unique_outlier_labels(_as_labels(labels_loose, "labels_loose"))
    if not len(labels) == len(tight) == len(loose):
        raise ValueError(
            "labels, labels_tight and labels_loose must label the same points; "
            f"got lengths {len(labels)}, {len(tight)}, {len(loose)}"
        )
    return _intersection_over_union(labels, loose), _intersection_over_union(labels, tight)


@dataclass(frozen=True)
class RefinedLabels:
    """One epoch's reliable pseudo-labels and the counts worth logging.

    ``labels`` (``N``): kept clusters renumbered 0..num_clusters−1 in the order of their input ids,
    −1 for every un-clustered instance (input outliers, points of unreliable clusters, rim points).
    """

    labels: np.ndarray
    num_clusters: int  # kept clusters (at least 2 members each)
    num_unclustered: int  # points labelled −1 in ``labels``
    num_demoted: int  # clustered input points that became instances
    independence_threshold: float | None  # on 1 − independence; None until a clustering had a cluster


class SelfPacedCriterion:
    """SpCL's reliability filter with the independence threshold fixed at the first call (epoch 0).

    The threshold is on 1 − cluster independence, taken from the clusters with more than one member::

        values = np.sort(1 - independence)                       # ascending, one per cluster
        threshold = values[min(len(values) - 1, int(np.round(len(values) * quantile)))]

    i.e. the reference code's ``np.sort(...)[min(len-1, np.round(len*0.9).astype('int'))]``
    (yxgeee/SpCL, examples/spcl_train_uda.py and spcl_train_usl.py). ``np.round`` rounds halves to
    even; with 15 clusters or fewer the index is the last one, so every cluster passes at epoch 0.
    If the first call has no cluster at all (everything an outlier), the threshold is set by the first
    call that has one. ``state_dict`` / ``load_state_dict`` carry it across a resume.
    """

    def __init__(self, *, quantile: float = 0.9) -> None:
        if not 0.0 <= quantile <= 1.0:
            raise InvalidParameterError(f"self-paced quantile must be in [0, 1], got {quantile!r}")
        self.quantile = quantile
        self.independence_threshold: float | None = None

    def __call__(self, labels: Any, labels_tight: Any, labels_loose: Any) -> RefinedLabels:
        """Refine ``labels`` (``N``, −1 = outlier) with the tight and loose runs; inputs are not modified."""
        independence, compactness = cluster_reliability(labels, labels_tight, labels_loose)
        original = _as_labels(labels, "labels")
        singletons = unique_outlier_labels(original)
        _, cluster_of, sizes = np.unique(singletons, return_inverse=True, return_counts=True)
        cluster_of = cluster_of.reshape(-1)
        num_groups = len(sizes)
        cluster_independence = np.zeros(num_groups)
        np.maximum.at(cluster_independence, cluster_of, independence)
        cluster_compactness = np.zeros(num_groups)
        np.maximum.at(cluster_compactness, cluster_of, compactness)

        unreliability = 1.0 - cluster_independence  # float64, same arithmetic for threshold and test
        multi = sizes > 1
        if self.independence_threshold is None and multi.any():
            values = np.sort(unreliability[multi])
            self.independence_threshold = float(
                values[min(len(values) - 1, int(np.round(len(values) * self.quantile)))]
            )

        threshold = -np.inf if self.independence_threshold is None else self.independence_threshold
        cluster_passes = multi & (unreliability <= threshold)
        keep = cluster_passes[cluster_of] & (compactness == cluster_compactness[cluster_of])
        kept_sizes = np.bincount(cluster_of[keep], minlength=num_groups)
        keep &= kept_sizes[cluster_of] > 1  # a cluster reduced to one point is an instance anyway

        refined = np.full(len(original), -1, dtype=np.int64)
        if keep.any():
            _, renumbered = np.unique(cluster_of[keep], return_inverse=True)
            refined[keep] = renumbered.reshape(-1)
        num_clusters = int(np.count_nonzero(kept_sizes > 1))
        return RefinedLabels(
            labels=refined,
            num_clusters=num_clusters,
            num_unclustered=int(np.count_nonzero(refined == -1)),
            num_demoted=int(np.count_nonzero((original >= 0) & (refined == -1))),
            independence_threshold=self.independence_threshold,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"quantile": self.quantile, "independence_threshold": self.independence_threshold}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"quantile", "independence_threshold"}:
            raise ValueError(
                f"SelfPacedCriterion state must have keys quantile, independence_threshold; got {sorted(state)}"
            )
        self.quantile = float(state["quantile"])
        threshold = state["independence_threshold"]
        self.independence_threshold = None if threshold is None else float(threshold)
