"""Label-free diagnostics of a clustering: what a user without query/gallery labels can watch.

Without labels there is no mAP, and eps cannot be tuned against one. What still says whether the
clusters are people: how many samples are left out, how big the clusters are, how much the
pseudo-labels still move from one epoch to the next (they settle as the model converges), and how
tight the clusters are compared with the gaps between them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from ..centroids import class_centroids

#: Cluster-size bins of the histogram logged per epoch: sizes [low, high] (None: no upper bound).
SIZE_BINS = ((2, 2), (3, 4), (5, 8), (9, 16), (17, 32), (33, None))


def size_bin_name(low: int, high: int | None) -> str:
    if high is None:
        return f"clusters_of_{low}+"
    return f"clusters_of_{low}" if low == high else f"clusters_of_{low}-{high}"


def _outliers_as_singletons(labels: np.ndarray) -> np.ndarray:
    """Each outlier its own label: two outliers are not "the same cluster" when labelings are compared."""
    out = np.asarray(labels, dtype=np.int64).copy()
    outliers = out < 0
    out[outliers] = out.max(initial=-1) + 1 + np.arange(int(outliers.sum()))
    return out


def cluster_diagnostics(labels: np.ndarray, features: torch.Tensor | np.ndarray,
                        previous_labels: np.ndarray | None = None) -> dict[str, float]:
    """Figures of one clustering (``labels``: −1 = outlier) of ``features`` (N×D).

    * ``outlier_share``: fraction of samples in no cluster;
    * ``clusters_of_…``: how many clusters have each size (``SIZE_BINS``), ``cluster_size_median``;
    * ``ari_previous`` / ``nmi_previous``: adjusted Rand index / NMI against ``previous_labels``
      (the previous epoch's, outliers counted as singletons): 1 = unchanged;
    * ``intra_distance``: mean cosine distance of a clustered sample to its cluster's centroid;
      ``inter_distance``: mean cosine distance of a centroid to its nearest other centroid. Clusters
      of people are tight (small intra) and apart (inter well above intra).
    """
    labels = np.asarray(labels, dtype=np.int64)
    features = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor) else features).float()
    clustered = labels >= 0
    figures: dict[str, float] = {"outlier_share": round(float(1.0 - clustered.mean()) if len(labels) else 0.0, 4)}
    sizes = np.bincount(labels[clustered]) if clustered.any() else np.zeros(0, dtype=np.int64)
    sizes = sizes[sizes > 0]
    for low, high in SIZE_BINS:
        inside = (sizes >= low) & (sizes <= (high if high is not None else np.iinfo(np.int64).max))
        figures[size_bin_name(low, high)] = int(inside.sum())
    if sizes.size:
        figures["cluster_size_median"] = float(np.median(sizes))
    if previous_labels is not None and len(previous_labels) == len(labels):
        now, before = _outliers_as_singletons(labels), _outliers_as_singletons(previous_labels)
        figures["ari_previous"] = round(float(adjusted_rand_score(before, now)), 4)
        figures["nmi_previous"] = round(float(normalized_mutual_info_score(before, now)), 4)
    if clustered.any():
        _, dense = np.unique(labels[clustered], return_inverse=True)
        members = F.normalize(features[torch.from_numpy(clustered)], dim=1)
        index = torch.from_numpy(dense)
        centroids = class_centroids(members, index)
        figures["intra_distance"] = round(float((1.0 - (members * centroids[index]).sum(dim=1)).mean()), 4)
        if len(centroids) > 1:
            similarity = centroids @ centroids.T
            similarity.fill_diagonal_(-float("inf"))
            figures["inter_distance"] = round(float((1.0 - similarity.max(dim=1).values).mean()), 4)
    return figures
