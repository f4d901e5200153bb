"""The first half of every epoch of the training loop: this epoch's training labels.

For a clustering method: the target features (the method's, or extracted) -> the clustering stage
(kNN -> k-reciprocal Jaccard -> clusterer, once, on rank 0) -> the method's refinement into labels,
plus the epoch's record (``epochs/epoch_NNN.npz``), label-free diagnostics and, for runs without a
query/gallery split, a picture of sampled clusters. For supervised training: the person ids. For a
pre-training method: whatever its ``on_clusters`` gives (every image its own group).

:class:`EpochLabelling` is a part of :class:`~uda_reid.engine.loop.TrainingLoop` kept in its own
module; it reads the loop's ``config``, ``method``, ``add_ons``, ``dist``, ``run_dir`` and log.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..clustering import ClusterResult, cluster_stage
from ..clustering.diagnostics import cluster_diagnostics
from ..clustering.eps import data_derived_eps
from ..clustering.jaccard import jaccard_distance
from ..config import RunConfig
from ..data.datasets import Sample
from ..evaluation.cluster_grid import save_cluster_grid
from ..methods import AdaptContext, EpochLabels
from ..models.features import extract_features
from .epoch_records import (
    epoch_record_path,
    plot_score_distributions,
    save_epoch_record,
)


def clusterer_options(config: RunConfig) -> dict[str, Any]:
    """The ``clustering`` settings the chosen clusterer takes."""
    c = config.clustering
    if c.clusterer == "dbscan":
        return {"eps": c.eps, "min_samples": c.min_samples}
    if c.clusterer == "hdbscan":
        return {"min_cluster_size": c.min_cluster_size, "min_samples": c.min_samples}
    if c.clusterer == "kmeans":  # k estimated, when not given, by the run's own density settings
        return {"n_clusters": c.n_clusters or None, "seed": config.seed, "estimate_eps": c.eps,
                "estimate_min_samples": c.min_samples, "estimate_k1": c.k1, "estimate_k2": c.k2}
    return {}


def ground_truth_clusters(samples: list[Sample]) -> ClusterResult:
    """The "clustering" of supervised training: every sample's own person id."""
    labels = np.asarray([s.pid for s in samples], dtype=np.int64)
    return ClusterResult(labels=labels, num_clusters=len(np.unique(labels[labels >= 0])),
                         num_outliers=int((labels < 0).sum()))


class EpochLabelling:
    """The training loop's per-epoch labels (see the module doc)."""

    def _epoch_labels(self, ctx: AdaptContext, network, epoch: int, row: dict[str, Any]) -> EpochLabels:
        """This epoch's training labels; the figures of the clustering go into ``row``."""
        config, dist = self.config, self.dist
        features = None
        if self.method.clusters or any(add_on.needs_features for add_on in self.add_ons):
            features = self.method.target_features(ctx)
            if features is None:
                features = extract_features(network, ctx.target_samples, config.data, device=self.device,
                                            progress=self.progress, desc="target features", dist=dist)
        if not self.method.clusters:
            result = ground_truth_clusters(ctx.target_samples)
            epoch_labels = self.method.on_clusters(result, features, ctx)
            row.update(self._add_ons_on_clusters(result, epoch_labels, features, ctx))
            return epoch_labels
        if config.clustering.eps == "auto":  # derived once, at the first clustering, and kept (docs/methods.md §9)
            self.resolved_eps = dist.on_main(self._data_derived_eps, features)
            config.clustering.eps = self.resolved_eps
            self._say(f"clustering.eps auto: {self.resolved_eps:.4f}, the mean of the smallest "
                      f"{config.clustering.eps_rho:g} of the pairwise Jaccard distances (kept from now on)")
        if self.resolved_eps is not None:
            row["eps"] = round(self.resolved_eps, 5)
        # Once, on rank 0; every rank gets the same result and refines it identically.
        result = dist.on_main(
            cluster_stage,
            features,
            clusterer=config.clustering.clusterer,
            clusterer_options=clusterer_options(config),
            k1=config.clustering.k1,
            k2=config.clustering.k2,
            knn=config.clustering.knn,
            max_distance=self.method.cluster_max_distance(),
            device=self.device,  # --device cpu keeps the clustering off a GPU too
        )
        row.update(clusters=result.num_clusters, outliers=result.num_outliers,
                   cluster_seconds=round(sum(result.timings.values()), 3))
        if result.num_clusters == 0:
            self._say(f"warning: epoch {epoch + 1}: every target image is an outlier (check clustering.eps / min_samples)")
        elif result.num_clusters == 1 and result.num_outliers == 0:
            self._say(f"warning: epoch {epoch + 1}: all target images fell into one cluster (clustering.eps "
                      f"{config.clustering.eps} is too loose for these features?)")
        epoch_labels = self.method.on_clusters(result, features, ctx)
        if dist.is_distributed:
            checksum = dist.check_identical(
                f"the pseudo-labels and clustered features of epoch {epoch + 1}",
                result.labels, epoch_labels.labels, features,
            )
            self.log.info(f"epoch {epoch + 1}: pseudo-labels identical on all {dist.world_size} processes "
                          f"(checksum {checksum})")
        row.update(epoch_labels.figures)
        row.update(self._add_ons_on_clusters(result, epoch_labels, features, ctx))
        if dist.is_main:
            row.update(cluster_diagnostics(result.labels, features, self._previous_cluster_labels(epoch)))
            save_epoch_record(self.run_dir, epoch + 1, cluster_labels=result.labels,
                              training_labels=epoch_labels.labels, scores=epoch_labels.scores)
            if epoch_labels.scores:
                plot_score_distributions(self.run_dir)
            if not self.labelled:
                grid = save_cluster_grid(
                    ctx.target_samples, result.labels, self.run_dir / f"clusters_epoch{epoch + 1:03d}.png",
                    seed=self.config.seed + epoch,
                    title=f"{self.run_dir.name}: epoch {epoch + 1}, {result.num_clusters} clusters "
                          f"({result.num_outliers} outliers); sampled clusters, one per row")
                if grid is not None:
                    self.log.image("clusters", grid, epoch + 1)
        return epoch_labels

    def _data_derived_eps(self, features: torch.Tensor) -> float:
        """Song et al.'s eps from the whole sparse Jaccard distance of ``features``."""
        c = self.config.clustering
        return data_derived_eps(jaccard_distance(features, k1=c.k1, k2=c.k2, knn=c.knn), c.eps_rho)

    def _previous_cluster_labels(self, epoch: int) -> np.ndarray | None:
        """The clustering of the previous epoch, from its saved record (also after --resume)."""
        path = epoch_record_path(self.run_dir, epoch)  # records count epochs from 1: this is epoch - 1's
        if epoch == 0 or not path.exists():
            return None
        with np.load(path) as record:
            return record["cluster_labels"]

    def _add_ons_on_clusters(self, result: ClusterResult, epoch_labels: EpochLabels, features, ctx) -> dict[str, float]:
        """Every add-on rebuilds its per-epoch state from the clustering; returns their figures."""
        spaces = epoch_labels.spaces if epoch_labels.spaces is not None else [features]
        figures: dict[str, float] = {}
        for add_on in self.add_ons:
            figures.update(add_on.on_clusters(result.labels, spaces, ctx))
        return figures
