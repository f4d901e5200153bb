"""eps from the data: the sparse computation equals Song et al.'s dense one."""

import numpy as np
import pytest
import scipy.sparse as sp
from clustering_inputs import clustered_features

from uda_reid.clustering.eps import data_derived_eps
from uda_reid.clustering.inputs import InvalidParameterError
from uda_reid.clustering.jaccard import jaccard_distance, to_dense


def song_eps(dense: np.ndarray, rho: float) -> float:
    """The authors' recipe on the dense matrix: upper triangle, non-zero entries, sorted, mean of the head."""
    upper = np.triu(dense, 1)
    values = np.sort(upper[np.nonzero(upper)], axis=None)
    return float(values[: int(np.round(rho * values.size))].mean())


@pytest.mark.parametrize("rho", [1.6e-3, 0.02, 0.3])
def test_sparse_eps_equals_the_dense_recipe(rho):
    features, _ = clustered_features(n=400, seed=1)
    features[50:53] = features[7]  # duplicates: zero distances, left out like np.nonzero does
    distance = jaccard_distance(features, k1=20, k2=6)
    assert data_derived_eps(distance, rho) == pytest.approx(song_eps(to_dense(distance), rho), rel=1e-6)


def test_a_share_larger_than_the_stored_entries_counts_the_absent_ones_as_one():
    distance = sp.csr_matrix(np.array([[0, 0.2, 0, 0], [0.2, 0, 0, 0], [0, 0, 0, 0.4], [0, 0, 0.4, 0]]))
    # 6 pairs, 2 stored (0.2, 0.4), 4 absent = 1.0; ρ = 0.5 -> the 3 smallest: 0.2, 0.4, 1.0
    assert data_derived_eps(distance, 0.5) == pytest.approx((0.2 + 0.4 + 1.0) / 3)


def test_too_few_images_for_rho_is_a_clear_error():
    distance = sp.csr_matrix(np.array([[0, 0.2], [0.2, 0]]))
    with pytest.raises(InvalidParameterError, match="no pair; cluster more images or set clustering.eps to a number"):
        data_derived_eps(distance, 1e-3)
