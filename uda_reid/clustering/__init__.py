"""Clustering stage: self-kNN → k-reciprocal Jaccard distance (sparse) → DBSCAN / HDBSCAN / K-means.

``cluster_stage(features)`` is the one call the training loop makes per epoch; the pieces are public
for methods that need them (SpCL's reliability reruns DBSCAN on ``result.distance``).
"""

from .cluster import (
    CLUSTERERS,
    Clusterer,
    ClusterResult,
    DBSCANClusterer,
    HDBSCANClusterer,
    KMeansClusterer,
    cluster_stage,
    make_clusterer,
    mutual_reachability_spanning_tree,
)
from .agreement import cross_agreement
from .inputs import (
    InvalidDistanceError,
    InvalidFeaturesError,
    InvalidParameterError,
    UnitFeatures,
    unit_features,
)
from .jaccard import jaccard_distance, jaccard_from_neighbors, to_dense
from .knn import KNN_BACKENDS, NeighborLists, knn_search

__all__ = [
    "CLUSTERERS",
    "KNN_BACKENDS",
    "ClusterResult",
    "Clusterer",
    "DBSCANClusterer",
    "HDBSCANClusterer",
    "InvalidDistanceError",
    "InvalidFeaturesError",
    "InvalidParameterError",
    "KMeansClusterer",
    "NeighborLists",
    "UnitFeatures",
    "cluster_stage",
    "cross_agreement",
    "jaccard_distance",
    "jaccard_from_neighbors",
    "knn_search",
    "make_clusterer",
    "mutual_reachability_spanning_tree",
    "to_dense",
    "unit_features",
]
