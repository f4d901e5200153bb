"""Clusterers behind one scikit-learn-like interface, and the whole clustering stage in one call.

Every clusterer has keyword-only parameters stored in ``__init__``, validation in ``fit``, ``labels_``
after fitting and ``fit_predict(X) -> labels`` with −1 for outliers. ``input_kind`` says what ``X``
is: ``"distance"`` (an N×N precomputed distance, sparse CSR with absent = 1.0, or dense) or
``"features"`` (N×D). :func:`cluster_stage` runs kNN → Jaccard → clusterer, which is what the training
loop calls once per epoch.
"""

from __future__ import annotations

import abc
import heapq
import inspect
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import faiss
import hdbscan
import numpy as np
import scipy.sparse as sp
import torch
from hdbscan._hdbscan_linkage import label as single_linkage_label
from hdbscan.hdbscan_ import (
    _tree_to_labels,  # the package's labelling of a spanning tree
)
from numba import njit

from ..errors import ConfigError
from ..registry import Registry
from .inputs import (
    FeatureArray,
    InvalidDistanceError,
    InvalidParameterError,
    UnitFeatures,
    unit_features,
)
from .jaccard import check_jaccard_parameters, jaccard_distance, jaccard_from_neighbors
from .knn import NeighborLists, knn_search
from .sparse_dbscan import dbscan_labels

DistanceMatrix = sp.spmatrix | np.ndarray

CLUSTERERS: Registry[type] = Registry("clusterer", "--clusterer")


def _check_distance(distance: DistanceMatrix, *, at_most_one: bool) -> DistanceMatrix:
    """Square, finite, non-negative distance (≤ 1 where absent entries are read as 1.0)."""
    if not (sp.issparse(distance) or isinstance(distance, np.ndarray)):
        raise InvalidDistanceError(
            f"the distance must be a scipy sparse matrix or numpy array; received {type(distance).__name__}"
        )
    if distance.ndim != 2 or distance.shape[0] != distance.shape[1]:
        raise InvalidDistanceError(f"the distance must be a square N×N matrix; received shape {distance.shape}")
    if distance.shape[0] == 0:
        raise InvalidDistanceError("the distance matrix is empty (N = 0)")
    values = distance.data if sp.issparse(distance) else distance
    if not np.issubdtype(values.dtype, np.floating) and not np.issubdtype(values.dtype, np.integer):
        raise InvalidDistanceError(f"the distance must hold real numbers; received dtype {values.dtype}")
    if values.size:
        if not np.isfinite(values).all():
            raise InvalidDistanceError("the distance contains NaN or inf entries")
        low, high = float(values.min()), float(values.max())
        if low < 0 or (at_most_one and high > 1):
            expected = "[0, 1]" if at_most_one else "≥ 0"
            raise InvalidDistanceError(f"distance entries must be {expected}; received values in [{low}, {high}]")
    return sp.csr_matrix(distance) if sp.issparse(distance) else distance


def _check_number(name: str, value: Any, *, low: float, high: float = np.inf, integer: bool = False, low_open: bool = False) -> None:
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    ok = isinstance(value, kinds) and not isinstance(value, bool)
    if ok:
        ok = (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        kind = "an integer" if integer else "a number"
        raise InvalidParameterError(f"{name} must be {kind} in {bracket}{low}, {high}]; received {value!r}")


class Clusterer(abc.ABC):
    """Common surface: ``fit`` sets ``labels_`` (N,) int64, −1 = outlier."""

    input_kind: ClassVar[str] = "distance"
    labels_: np.ndarray

    @abc.abstractmethod
    def fit(self, data: Any) -> Clusterer:
        """Cluster ``data`` (a distance or features, see ``input_kind``) and set ``labels_``."""

    def fit_predict(self, data: Any) -> np.ndarray:
        return self.fit(data).labels_

    def fit_predict_features(self, unit: UnitFeatures) -> np.ndarray:
        """Labels of features :func:`cluster_stage` has already checked and L2-normalised (for
        ``input_kind == "features"``). The default hands the unit rows to :meth:`fit_predict` as a
        torch tensor; a clusterer that would check them again takes ``unit`` as it is instead.
        """
        return self.fit_predict(unit.tensor)

    @property
    def max_distance(self) -> float | None:
        """Largest distance the clusterer reads (the Jaccard step may drop larger ones), or None = all."""
        return None

    def __repr__(self) -> str:
        params = ", ".join(f"{key}={value!r}" for key, value in vars(self).items() if not key.endswith("_"))
        return f"{type(self).__name__}({params})"


@CLUSTERERS.register("dbscan")
class DBSCANClusterer(Clusterer):
    """DBSCAN on a precomputed distance, defaults eps 0.6 and min_samples 4 as SpCL: scikit-learn's
    labels, computed as connected components on a sparse symmetric distance (``sparse_dbscan``).

    A sample counts in its own neighbourhood (so the sparse Jaccard matrix stores its zero diagonal).
    """

    input_kind = "distance"

    def __init__(self, *, eps: float = 0.6, min_samples: int = 4) -> None:
        self.eps = eps
        self.min_samples = min_samples

    @property
    def max_distance(self) -> float | None:
        return float(self.eps) if isinstance(self.eps, (int, float)) and 0 < self.eps <= 1 else None

    def fit(self, distance: DistanceMatrix) -> DBSCANClusterer:
        _check_number("eps", self.eps, low=0.0, low_open=True)
        _check_number("min_samples", self.min_samples, low=1, integer=True)
        matrix = _check_distance(distance, at_most_one=False)
        self.labels_, self.core_sample_indices_ = dbscan_labels(matrix, float(self.eps), int(self.min_samples))
        return self


def _core_distances(matrix: sp.csr_matrix, min_points: int) -> np.ndarray:
    """min_points-th smallest distance to *another* sample per row; absent entries count as 1.0."""
    n = matrix.shape[0]
    coo = matrix.tocoo()
    off = coo.row != coo.col  # the diagonal is the sample itself, not a neighbour
    rows, values = coo.row[off], coo.data[off].astype(np.float64)
    order = np.lexsort((values, rows))
    rows, values = rows[order], values[order]
    row_start = np.searchsorted(rows, np.arange(n))
    rank = np.arange(len(rows)) - row_start[rows]
    core = np.ones(n, dtype=np.float64)
    picked = rank == min_points - 1
    core[rows[picked]] = values[picked]
    return core


@njit(cache=True)
def _prim_spanning_tree(indptr, indices, weights, n):
    """hdbscan's dense Prim (``mst_linkage_core``) run on a sparse graph whose absent pairs weigh 1.0.

    Same rules, so the same (n−1)×3 edge list (source, node, weight) in the same order: start at
    node 0; a node's best weight and source change only on strict improvement; the next node is the
    lightest, ties to the smaller index (a heap keyed by (weight, node) with stale entries skipped).
    """
    in_tree = np.zeros(n, dtype=np.bool_)
    best = np.ones(n, dtype=np.float64)  # every absent pair weighs 1.0, first offered by node 0
    source = np.zeros(n, dtype=np.int64)
    heap = [(1.0, j) for j in range(1, n)]
    heapq.heapify(heap)
    edges = np.zeros((n - 1, 3), dtype=np.float64)
    node = 0
    for step in range(n - 1):
        in_tree[node] = True
        for e in range(indptr[node], indptr[node + 1]):
            j = indices[e]
            if not in_tree[j] and weights[e] < best[j]:
                best[j] = weights[e]
                source[j] = node
                heapq.heappush(heap, (weights[e], j))
        while True:
            weight, j = heapq.heappop(heap)
            if not in_tree[j] and weight == best[j]:
                break
        edges[step, 0] = source[j]
        edges[step, 1] = j
        edges[step, 2] = weight
        node = j
    return edges


def mutual_reachability_spanning_tree(distance: sp.csr_matrix, min_samples: int) -> np.ndarray:
    """HDBSCAN's minimum spanning tree of the mutual reachability graph of a sparse distance.

    Mutual reachability = max(core_i, core_j, d_ij), core = distance to the min_samples-th other
    sample; absent pairs are 1.0, the largest value, so only stored pairs need visiting. Returns the
    (N−1)×3 float64 edge list exactly as ``hdbscan``'s dense generic algorithm builds it.
    """
    n = distance.shape[0]
    min_points = max(1, min(n - 1, min_samples))
    core = _core_distances(distance, min_points)
    graph = distance.tocoo()
    off = graph.row != graph.col
    rows, cols = graph.row[off], graph.col[off]
    weights = np.maximum(np.maximum(core[rows], core[cols]), graph.data[off].astype(np.float64))
    reachability = sp.csr_matrix((weights, (rows, cols)), shape=(n, n))
    return _prim_spanning_tree(
        reachability.indptr.astype(np.int64), reachability.indices.astype(np.int64), reachability.data, n
    )


@CLUSTERERS.register("hdbscan")
class HDBSCANClusterer(Clusterer):
    """HDBSCAN (the ``hdbscan`` package) on a precomputed distance.

    Sparse input: absent entries are distance 1.0, so pass a Jaccard matrix computed without
    ``max_distance``. The package's own sparse path rejects disconnected graphs and loops in Python
    over every entry, so the spanning tree of the mutual reachability graph is built here, with the
    same rules as the package's dense algorithm, and the package's own routines turn it into labels
    (single linkage, condensed tree, cluster selection): the labels equal ``hdbscan.HDBSCAN`` on
    the dense matrix.
    """

    input_kind = "distance"

    def __init__(
        self,
        *,
        min_cluster_size: int = 4,
        min_samples: int | None = 4,
        cluster_selection_epsilon: float = 0.0,
        cluster_selection_method: str = "eom",
        allow_single_cluster: bool = False,
    ) -> None:
        self.min_cluster_size = min_cluster_size
        self.min_samples = min_samples
        self.cluster_selection_epsilon = cluster_selection_epsilon
        self.cluster_selection_method = cluster_selection_method
        self.allow_single_cluster = allow_single_cluster

    def fit(self, distance: DistanceMatrix) -> HDBSCANClusterer:
        _check_number("min_cluster_size", self.min_cluster_size, low=2, integer=True)
        min_samples = self.min_cluster_size if self.min_samples is None else self.min_samples
        _check_number("min_samples", min_samples, low=1, integer=True)
        _check_number("cluster_selection_epsilon", self.cluster_selection_epsilon, low=0.0)
        if self.cluster_selection_method not in ("eom", "leaf"):
            raise InvalidParameterError(
                f"cluster_selection_method must be 'eom' or 'leaf'; received {self.cluster_selection_method!r}"
            )
        matrix = _check_distance(distance, at_most_one=sp.issparse(distance))
        n = matrix.shape[0]
        if n < 2:
            self.labels_ = np.full(n, -1, dtype=np.int64)
            return self
        if sp.issparse(matrix):
            edges = mutual_reachability_spanning_tree(matrix, int(min_samples))
            edges = edges[np.argsort(edges.T[2]), :]  # the package's own ordering step
            labels, probabilities, *_ = _tree_to_labels(
                None,
                single_linkage_label(edges),
                min_cluster_size=int(self.min_cluster_size),
                cluster_selection_method=self.cluster_selection_method,
                allow_single_cluster=bool(self.allow_single_cluster),
                cluster_selection_epsilon=float(self.cluster_selection_epsilon),
            )
            self.labels_ = labels.astype(np.int64)
            self.probabilities_ = probabilities
            return self
        model = hdbscan.HDBSCAN(
            metric="precomputed",
            min_samples=int(min_samples),
            min_cluster_size=int(self.min_cluster_size),
            cluster_selection_epsilon=float(self.cluster_selection_epsilon),
            cluster_selection_method=self.cluster_selection_method,
            allow_single_cluster=bool(self.allow_single_cluster),
        ).fit(np.asarray(matrix, dtype=np.float64))
        self.labels_ = model.labels_.astype(np.int64)
        self.probabilities_ = model.probabilities_
        return self


@CLUSTERERS.register("kmeans")
class KMeansClusterer(Clusterer):
    """K-means (faiss) on L2-normalised features. No outliers.

    ``n_clusters=None`` estimates k as the number of clusters DBSCAN (``estimate_eps``,
    ``estimate_min_samples``) finds on the k-reciprocal Jaccard distance (``estimate_k1``,
    ``estimate_k2``) of the same features, i.e. what the run's density-based pipeline would produce
    (the loop passes its ``clustering`` settings); at least 1. ``n_clusters_`` records the k used.
    """

    input_kind = "features"

    def __init__(self, *, n_clusters: int | None = None, n_iter: int = 20, seed: int = 0, estimate_eps: float = 0.6,
                 estimate_min_samples: int = 4, estimate_k1: int = 30, estimate_k2: int = 6) -> None:
        self.n_clusters = n_clusters
        self.n_iter = n_iter
        self.seed = seed
        self.estimate_eps = estimate_eps
        self.estimate_min_samples = estimate_min_samples
        self.estimate_k1 = estimate_k1
        self.estimate_k2 = estimate_k2

    def _estimate_k(self, unit: UnitFeatures) -> int:
        _check_number("estimate_k1", self.estimate_k1, low=1, integer=True)
        _check_number("estimate_k2", self.estimate_k2, low=1, integer=True)
        k1 = min(int(self.estimate_k1), unit.shape[0] - 1)
        distance = jaccard_distance(unit, k1, min(int(self.estimate_k2), k1), max_distance=float(self.estimate_eps))
        labels = DBSCANClusterer(eps=self.estimate_eps, min_samples=self.estimate_min_samples).fit_predict(distance)
        return max(1, int(labels.max()) + 1)

    def fit(self, features: FeatureArray | UnitFeatures) -> KMeansClusterer:
        """``features`` are checked and L2-normalised here unless they come as :class:`UnitFeatures`."""
        _check_number("n_iter", self.n_iter, low=1, integer=True)
        _check_number("seed", self.seed, low=0, integer=True)
        _check_number("estimate_eps", self.estimate_eps, low=0.0, high=1.0, low_open=True)
        checked = unit_features(features)
        n = checked.shape[0]
        if self.n_clusters is None:
            k = 1 if n < 3 else self._estimate_k(checked)
        else:
            _check_number("n_clusters", self.n_clusters, low=1, high=n, integer=True)
            k = int(self.n_clusters)
        unit = checked.numpy()
        # min_points_per_centroid=1: small N is legitimate here, and faiss would warn on stdout
        kmeans = faiss.Kmeans(
            unit.shape[1], k, niter=int(self.n_iter), seed=int(self.seed), verbose=False, min_points_per_centroid=1
        )
        kmeans.train(unit)
        _, assignment = kmeans.index.search(unit, 1)
        labels = assignment[:, 0]
        self.cluster_centers_ = kmeans.centroids
        self.n_clusters_ = k
        self.labels_ = labels.astype(np.int64)
        return self

    def fit_predict_features(self, unit: UnitFeatures) -> np.ndarray:
        return self.fit_predict(unit)  # fit takes the checked features as they are


def make_clusterer(clusterer: str | Clusterer, options: Mapping[str, Any] | None = None) -> Clusterer:
    """A clusterer instance from a registry name plus options, or the instance given."""
    if isinstance(clusterer, Clusterer):
        if options:
            raise ConfigError("clusterer options can only be given with a clusterer name, not an instance")
        return clusterer
    cls = CLUSTERERS.get(clusterer)
    try:
        return cls(**dict(options or {}))
    except TypeError:
        known = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        unknown = sorted(set(options or {}) - set(known))
        if not unknown:
            raise
        raise ConfigError(
            f"unknown option(s) {unknown} for --clusterer {clusterer}; known: {', '.join(known)}"
        ) from None


@dataclass
class ClusterResult:
    """Pseudo-labels of one clustering stage and what it took to get them."""

    labels: np.ndarray  # (N,) int64, −1 = outlier
    num_clusters: int
    num_outliers: int
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step: knn, jaccard, cluster
    distance: sp.csr_matrix | None = None  # the Jaccard distance (None for feature clusterers)
    neighbors: NeighborLists | None = None
    knn_backend: str = ""

    @property
    def cluster_sizes(self) -> np.ndarray:
        return np.bincount(self.labels[self.labels >= 0], minlength=self.num_clusters)


_AUTO = "auto"


def cluster_stage(
    features: FeatureArray | UnitFeatures,
    *,
    clusterer: str | Clusterer = "dbscan",
    clusterer_options: Mapping[str, Any] | None = None,
    k1: int = 30,
    k2: int = 6,
    knn: str = "auto",
    max_distance: float | str | None = _AUTO,
    device: torch.device | str | None = None,
) -> ClusterResult:
    """kNN → k-reciprocal Jaccard distance → clusterer on N×D features (numpy or torch; not modified).

    ``max_distance="auto"`` keeps only the entries the clusterer reads (≤ eps for DBSCAN, all for
    HDBSCAN); pass a number to keep more (e.g. 0.62 for SpCL's loose-eps reliability pass on
    ``result.distance``) or None for all. Feature clusterers (K-means) skip the distance steps.
    The features are checked and L2-normalised once, here; every step takes the result as it is.
    ``device``: where the exact kNN runs (the run's device; None: a GPU when there is one).
    """
    model = make_clusterer(clusterer, clusterer_options)
    timings: dict[str, float] = {}
    unit = unit_features(features)
    distance: sp.csr_matrix | None = None
    lists: NeighborLists | None = None
    if model.input_kind == "features":
        start = time.perf_counter()
        labels = model.fit_predict_features(unit)
        timings["cluster"] = time.perf_counter() - start
    else:
        limit = model.max_distance if max_distance == _AUTO else max_distance
        check_jaccard_parameters(unit.shape[0], k1, k2, limit)  # before the kNN, to name k1/k2
        start = time.perf_counter()
        lists = knn_search(unit, k1, knn=knn, device=device)
        timings["knn"] = time.perf_counter() - start
        start = time.perf_counter()
        distance = jaccard_from_neighbors(unit, lists.indices, k1, k2, max_distance=limit)
        timings["jaccard"] = time.perf_counter() - start
        start = time.perf_counter()
        labels = model.fit_predict(distance)
        timings["cluster"] = time.perf_counter() - start
    labels = np.asarray(labels, dtype=np.int64)
    num_clusters = int(labels.max()) + 1 if len(labels) and labels.max() >= 0 else 0
    return ClusterResult(
        labels=labels,
        num_clusters=num_clusters,
        num_outliers=int((labels < 0).sum()),
        timings=timings,
        distance=distance,
        neighbors=lists,
        knn_backend=lists.backend if lists is not None else "",
    )
