"""k-reciprocal re-ranking for evaluation (Zhong et al., CVPR 2017), on sparse rows.

The same machinery as the clustering Jaccard distance (:mod:`uda_reid.clustering.jaccard`), with the
original re-ranking's conventions (METHODS.md §1, last paragraph): forward lists of k1+1 entries,
weights from the squared distance divided by its row maximum over query+gallery, and the final
distance (1−λ)·Jaccard + λ·normalised squared distance. No (Q+G)² matrix is built, so MSMT17-size
galleries fit; the output itself is the dense Q×G matrix the ranking code consumes.
"""

from __future__ import annotations

import numpy as np
import torch

from ..clustering.inputs import (
    FeatureArray,
    InvalidFeaturesError,
    InvalidParameterError,
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


def re_rank(
    query_feats: FeatureArray,
    gallery_feats: FeatureArray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> np.ndarray:
    """Re-ranked Q×G float32 distance between ``query_feats`` (Q×D) and ``gallery_feats`` (G×D).

    Features are L2-normalised inside; squared distance = 2 − 2·cosine similarity. Neighbours are
    exact (blocked product), ties by smaller index, queries and gallery ranked together.
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
    everything = torch.cat([query.cpu(), gallery.cpu()])
    check_neighbor_count(everything.shape[0], k1 + 1, option="k1+1 (query + gallery samples)")
    lists = exact_knn(everything, k1 + 1, device="cpu", track_farthest=True)
    row_max = 2.0 - 2.0 * lists.farthest_similarity.astype(np.float64)  # largest squared distance per row
    scale = 1.0 / np.maximum(row_max, np.finfo(np.float32).tiny)
    unit = np.ascontiguousarray(everything.numpy())
    encoding = k_reciprocal_encoding(unit, lists.indices, forward_width=k1 + 1, half=half_width(k1), distance_scale=scale)
    expanded = query_expansion(encoding, lists.indices, k2)
    del encoding
    jaccard = jaccard_rows(expanded, np.arange(num_query), clip_negative=False, zero_diagonal=False)
    jaccard = jaccard[:, num_query:].tocoo()
    squared = 2.0 - 2.0 * (everything[:num_query] @ everything[num_query:].T)
    final = squared.numpy()  # Q×G float32, updated in place (no float64 Q×G temporary)
    final *= (lambda_value * scale[:num_query, None]).astype(np.float32)
    final += np.float32(1.0 - lambda_value)  # absent Jaccard entries are 1.0
    final[jaccard.row, jaccard.col] -= ((1.0 - lambda_value) * (1.0 - jaccard.data.astype(np.float64))).astype(np.float32)
    return final
