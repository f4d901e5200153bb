"""k-reciprocal re-ranking for evaluation (Zhong et al., CVPR 2017), on sparse rows.

The same machinery as the clustering Jaccard distance (:mod:`uda_reid.clustering.jaccard`), with the
original re-ranking's conventions (docs/methods.md §1, last paragraph): forward lists of k1+1 entries,
weights from the squared distance divided by its row maximum over query+gallery, and the final
distance (1−λ)·Jaccard + λ·normalised squared distance. No (Q+G)² matrix is built, so MSMT17-size
galleries fit; :func:`re_rank_chunks` hands the dense result to the ranking a chunk of queries at a
time, so evaluation with re-ranking at MSMT17 size never holds Q×G either.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ..clustering.inputs import (
    FeatureArray,
    InvalidFeaturesError,
    InvalidParameterError,
    UnitFeatures,
    check_neighbor_count,
    l2_normalised,
)
from ..clustering.jaccard import (
    half_width,
    jaccard_rows,
    k_reciprocal_encoding,
    query_expansion,
)
from ..clustering.knn import exact_knn


def re_rank_chunks(
    query_feats: FeatureArray,
    gallery_feats: FeatureArray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    *,
    chunk_rows: int | None = None,
) -> Iterator[tuple[slice, np.ndarray]]:
    """The re-ranked distance of ``query_feats`` (Q×D) to ``gallery_feats`` (G×D), ``chunk_rows``
    queries at a time: ``(query slice, rows × G float32)`` pairs, for :func:`evaluate_ranking_chunked`.

    The neighbour lists, encodings and the query rows of the Jaccard distance are sparse (a few
    thousand entries per row); only one chunk of the dense result exists at a time, so memory is
    O((Q+G)·k1·k2 + chunk_rows·G) instead of (Q+G)² (the original) or Q×G. Arguments are checked
    and the sparse part computed when this is called, before the first chunk is asked for.
    """
    query = l2_normalised(query_feats, name="query_feats")
    gallery = l2_normalised(gallery_feats, name="gallery_feats")
    if query.shape[1] != gallery.shape[1]:
        raise InvalidFeaturesError(
            f"query_feats and gallery_feats must have the same dimension; received {query.shape[1]} and {gallery.shape[1]}"
        )
    if isinstance(k1, bool) or not isinstance(k1, (int, np.integer)) or k1 < 1:
        raise InvalidParameterError(f"k1 must be an integer ≥ 1; received {k1!r}")
    if isinstance(k2, bool) or not isinstance(k2, (int, np.integer)) or not 1 <= k2 <= k1 + 1:
        raise InvalidParameterError(f"k2 must be an integer in [1, k1+1={k1 + 1}]; received {k2!r}")
    if isinstance(lambda_value, bool) or not isinstance(lambda_value, (int, float)) or not 0.0 <= lambda_value <= 1.0:
        raise InvalidParameterError(f"lambda_value must be in [0, 1]; received {lambda_value!r}")
    num_query = query.shape[0]
    chunk_rows = max(1, chunk_rows or num_query)
    everything = torch.cat([query.cpu(), gallery.cpu()])
    check_neighbor_count(everything.shape[0], k1 + 1, option="k1+1 (query + gallery samples)")
    # Both parts were checked and normalised above: the kNN does not check them again.
    lists = exact_knn(UnitFeatures(everything), k1 + 1, device="cpu", track_farthest=True)
    row_max = 2.0 - 2.0 * lists.farthest_similarity.astype(np.float64)  # largest squared distance per row
    scale = 1.0 / np.maximum(row_max, np.finfo(np.float32).tiny)
    unit = np.ascontiguousarray(everything.numpy())
    encoding = k_reciprocal_encoding(unit, lists.indices, forward_width=k1 + 1, half=half_width(k1), distance_scale=scale)
    expanded = query_expansion(encoding, lists.indices, k2)
    del encoding, lists
    jaccard = jaccard_rows(expanded, np.arange(num_query), clip_negative=False, zero_diagonal=False)[:, num_query:].tocsr()
    del expanded
    query_part, gallery_part = everything[:num_query], everything[num_query:]

    def chunks() -> Iterator[tuple[slice, np.ndarray]]:
        for start in range(0, num_query, chunk_rows):
            rows = slice(start, min(num_query, start + chunk_rows))
            final = (2.0 - 2.0 * (query_part[rows] @ gallery_part.T)).numpy()  # rows×G float32, updated in place
            final *= (lambda_value * scale[rows, None]).astype(np.float32)
            final += np.float32(1.0 - lambda_value)  # absent Jaccard entries are 1.0
            part = jaccard[rows].tocoo()
            final[part.row, part.col] -= ((1.0 - lambda_value) * (1.0 - part.data.astype(np.float64))).astype(np.float32)
            yield rows, final

    return chunks()


def re_rank(
    query_feats: FeatureArray,
    gallery_feats: FeatureArray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> np.ndarray:
    """Re-ranked Q×G float32 distance between ``query_feats`` (Q×D) and ``gallery_feats`` (G×D), whole.

    Features are L2-normalised inside; squared distance = 2 − 2·cosine similarity. Neighbours are
    exact (blocked product), ties by smaller index, queries and gallery ranked together. For large
    query sets rank :func:`re_rank_chunks` instead.
    """
    return np.concatenate([part for _, part in re_rank_chunks(query_feats, gallery_feats, k1, k2, lambda_value)])
