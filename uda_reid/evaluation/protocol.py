"""Evaluate a model on a dataset's query/gallery split (Market protocol)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import DataConfig
from ..data.datasets import ReidDataset
from ..models.features import extract_features
from ..errors import DatasetLayoutError
from .ranking import evaluate_ranking_chunked

#: ``rerank(query, gallery, chunk_rows=R)`` -> (query slice, R×G distances) pairs in query order.
Reranker = Callable[..., Iterator[tuple[slice, np.ndarray]]]

#: Distances ranked at a time by evaluation (queries × gallery entries): 32 M floats = 128 MB plus
#: the sort's int64 indices, whatever the size of the query set.
QUERY_CHUNK_ENTRIES = 32 * 1024 * 1024

if TYPE_CHECKING:
    from ..distributed import DistributedContext


def squared_euclidean(query: torch.Tensor, gallery: torch.Tensor) -> np.ndarray:
    """Q×G squared Euclidean distance of L2-normalised features (2 − 2·cosine)."""
    query = F.normalize(query.float(), dim=1)
    gallery = F.normalize(gallery.float(), dim=1)
    return (2.0 - 2.0 * query @ gallery.t()).clamp_min(0).numpy()


def summarize(result: dict[str, object]) -> dict[str, float]:
    """mAP and Rank-1/5/10 in percent, as plain floats (how re-ID papers report them)."""
    cmc = np.asarray(result["cmc"])
    figures = {"mAP": 100.0 * float(result["mAP"])}
    for rank in (1, 5, 10):
        figures[f"rank{rank}"] = 100.0 * float(cmc[min(rank, len(cmc)) - 1])
    return figures


def evaluate_model(
    model: nn.Module,
    dataset: ReidDataset,
    data_config: DataConfig,
    *,
    device: torch.device | None = None,
    progress: bool = True,
    rerank: Reranker | None = None,
    dist: DistributedContext | None = None,
) -> dict[str, float]:
    """mAP and Rank-1/5/10 (percent) of ``model`` on ``dataset``'s query/gallery.

    ``rerank(query_feats, gallery_feats, chunk_rows=R)`` (e.g. :func:`~.rerank.re_rank_chunks`)
    replaces the plain distance when given: it yields (query slice, rows × G distance) pairs.
    With ``dist`` of several processes (call it on every one), the features are extracted in
    shares, the Q×G ranking runs on rank 0 only and every process returns rank 0's figures.
    """
    if not dataset.query or not dataset.gallery:
        raise DatasetLayoutError(
            f"dataset {dataset.name!r} at {dataset.root} has no query/gallery split to evaluate on"
        )
    samples = list(dataset.query) + list(dataset.gallery)
    features = extract_features(
        model, samples, data_config, device=device, progress=progress, desc=f"features {dataset.name}", dist=dist
    )
    if dist is not None:
        return dist.on_main(_ranking_figures, dataset, features, rerank)
    return _ranking_figures(dataset, features, rerank)


def _ranking_figures(
    dataset: ReidDataset, features: torch.Tensor, rerank: Reranker | None
) -> dict[str, float]:
    """Figures of the query rows (first) against the gallery rows of ``features``."""
    query, gallery = features[: len(dataset.query)], features[len(dataset.query) :]
    ids = (
        np.array([s.pid for s in dataset.query]),
        np.array([s.pid for s in dataset.gallery]),
        np.array([s.camid for s in dataset.query]),
        np.array([s.camid for s in dataset.gallery]),
    )
    # Distances of a chunk of queries at a time: memory follows the chunk, not Q×G.
    rows = max(1, QUERY_CHUNK_ENTRIES // max(1, len(dataset.gallery)))
    if rerank is not None:
        return summarize(evaluate_ranking_chunked(rerank(query, gallery, chunk_rows=rows), *ids))
    chunks = ((slice(start, start + len(block)), squared_euclidean(block, gallery))
              for start, block in ((start, query[start : start + rows]) for start in range(0, len(query), rows)))
    return summarize(evaluate_ranking_chunked(chunks, *ids))
