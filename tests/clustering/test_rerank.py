"""Evaluation re-ranking against the dense brute force (Zhong et al. conventions)."""

import numpy as np
import pytest
import torch
from clustering_inputs import clustered_features

from uda_reid.clustering.inputs import InvalidFeaturesError, InvalidParameterError
from uda_reid.evaluation.rerank import re_rank, re_rank_chunks


@pytest.mark.parametrize("k1, k2, lambda_value, seed", [(20, 6, 0.3, 0), (10, 1, 0.0, 1), (7, 8, 1.0, 2), (5, 3, 0.5, 3)])
def test_re_rank_equals_dense_reference(reference, k1, k2, lambda_value, seed):
    features, _ = clustered_features(n=330, seed=seed)
    query, gallery = features[:60], features[60:]
    ours = re_rank(query, gallery, k1, k2, lambda_value)
    expected = reference.reference_re_rank(query, gallery, k1, k2, lambda_value)
    assert ours.shape == (60, 270) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=0)


def test_query_chunks_are_the_rows_of_the_whole_re_ranked_matrix(reference):
    features, _ = clustered_features(n=330, seed=5)
    query, gallery = features[:61], features[61:]
    expected = reference.reference_re_rank(query, gallery, 20, 6, 0.3)
    parts = list(re_rank_chunks(query, gallery, chunk_rows=8))
    assert [(rows.start, rows.stop) for rows, _ in parts] == [(s, min(61, s + 8)) for s in range(0, 61, 8)]
    assert all(part.shape == (rows.stop - rows.start, 269) for rows, part in parts)
    np.testing.assert_allclose(np.concatenate([part for _, part in parts]), expected, atol=1e-5, rtol=0)


def test_bad_arguments_are_refused_when_re_rank_chunks_is_called_not_when_read():
    features, _ = clustered_features(n=60)
    with pytest.raises(InvalidParameterError, match="k2 must be"):
        re_rank_chunks(features[:10], features[10:], k2=50)


def test_re_rank_improves_retrieval_of_same_identity():
    features, ids = clustered_features(n=400, identities=20, noise=1.2, seed=4)
    query, gallery = features[:80], features[80:]
    plain = 2 - 2 * (query / np.linalg.norm(query, axis=1, keepdims=True)) @ (gallery / np.linalg.norm(gallery, axis=1, keepdims=True)).T
    reranked = re_rank(torch.from_numpy(query), torch.from_numpy(gallery))

    def rank1(distance):
        return np.mean(ids[80:][distance.argmin(axis=1)] == ids[:80])

    assert rank1(reranked) >= rank1(plain)


def test_re_rank_input_checks():
    features, _ = clustered_features(n=60)
    with pytest.raises(InvalidFeaturesError, match="same dimension; received 24 and 10"):
        re_rank(features[:10], features[10:, :10])
    with pytest.raises(InvalidParameterError, match="lambda_value must be in \\[0, 1\\]; received 1.5"):
        re_rank(features[:10], features[10:], lambda_value=1.5)
    with pytest.raises(InvalidParameterError, match="k2 must be an integer in \\[1, k1\\+1=21\\]"):
        re_rank(features[:10], features[10:], k2=22)
    with pytest.raises(InvalidFeaturesError, match="query_feats contain NaN or inf values in 1 row\\(s\\): 2"):
        bad = features[:10].copy()
        bad[2, 0] = np.nan
        re_rank(bad, features[10:])
    with pytest.raises(InvalidFeaturesError, match="needs more than 21 samples; received N=20"):
        re_rank(features[:5], features[5:20])
