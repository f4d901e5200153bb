"""DBSCAN's eps from the data (Song et al., "Unsupervised domain adaptive re-identification: theory
and practice", PR 2020; docs/methods.md §9), for cameras nobody has labelled.

eps is the mean of the smallest ρ-share of the pairwise Jaccard distances (the non-zero entries of the
upper triangle, ρ = 1.6·10⁻³ as in the authors' code), computed once at the first clustering and
kept. From the sparse matrix, without an N×N array: absent entries are 1.0, so the smallest share
lies among the stored entries unless it is larger than their count, and then the missing ones count
as 1.0 each.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .inputs import InvalidParameterError

SONG_RHO = 1.6e-3


def data_derived_eps(distance: sp.spmatrix, rho: float = SONG_RHO) -> float:
    """eps = mean of the smallest round(ρ·M) of the M non-zero pairwise distances (i < j).

    ``distance`` is the N×N Jaccard matrix as ``jaccard_distance`` returns it with
    ``max_distance=None`` (absent = 1.0; a cut-off matrix would drop the entries the mean needs).
    """
    if not 0 < rho < 1:
        raise InvalidParameterError(f"clustering.eps_rho must be in (0, 1); received {rho!r}")
    n = distance.shape[0]
    upper = sp.triu(sp.csr_matrix(distance), k=1).tocoo()
    stored = upper.data.astype(np.float64)
    positive = stored[stored > 0]
    zero_pairs = int((stored == 0).sum())  # explicit zeros: identical encodings, left out as in np.nonzero
    pairs = n * (n - 1) // 2 - zero_pairs
    count = int(np.round(rho * pairs))
    if count < 1:
        raise InvalidParameterError(
            f"clustering.eps auto: ρ={rho:g} of the {pairs} distinct pairs of {n} images is no pair; "
            f"cluster more images or set clustering.eps to a number"
        )
    if count <= positive.size:
        return float(np.partition(positive, count - 1)[:count].mean())
    return float((positive.sum() + (count - positive.size) * 1.0) / count)  # the rest are absent: 1.0
