"""evaluate_ranking against an independent brute-force computation of the Market protocol."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from uda_reid.errors import UdaReidError
from uda_reid.evaluation import EvaluationInputError, evaluate_ranking


def brute_force(distmat, q_pids, g_pids, q_cams, g_cams, max_rank):
    """Per query: drop same-id-same-camera gallery items, AP via scikit-learn, CMC by first hit."""
    aps, cmc = [], np.zeros(max_rank)
    for q in range(len(q_pids)):
        keep = ~((g_pids == q_pids[q]) & (g_cams == q_cams[q]))
        truth = g_pids[keep] == q_pids[q]
        if not truth.any():
            continue
        scores = -distmat[q, keep]
        aps.append(average_precision_score(truth, scores))
        ranked_truth = truth[np.argsort(distmat[q, keep], kind="stable")]
        first = np.flatnonzero(ranked_truth)[0]
        if first < max_rank:
            cmc[first:] += 1
    return float(np.mean(aps)), cmc / len(aps), len(aps)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_evaluate_ranking_matches_brute_force_on_random_data(seed):
    rng = np.random.default_rng(seed)
    num_q, num_g = 25, 120
    q_pids = rng.integers(0, 10, num_q)
    g_pids = rng.integers(0, 12, num_g)
    q_cams = rng.integers(0, 3, num_q)
    g_cams = rng.integers(0, 3, num_g)
    distmat = rng.random((num_q, num_g))  # continuous: no ties, so AP definitions agree
    result = evaluate_ranking(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=20)
    ap, cmc, valid = brute_force(distmat, q_pids, g_pids, q_cams, g_cams, 20)
    assert result["mAP"] == pytest.approx(ap, abs=1e-12)
    np.testing.assert_allclose(result["cmc"], cmc, atol=1e-12)
    assert result["num_valid_queries"] == valid


def test_same_camera_true_match_is_ignored_hand_example():
    # Gallery: [same id same cam (removed), other id, same id other cam, other id]
    distmat = np.array([[0.1, 0.2, 0.3, 0.4]])
    result = evaluate_ranking(distmat, np.array([7]), np.array([7, 3, 7, 5]), np.array([0]), np.array([0, 1, 1, 2]))
    # After removal the ranking is [other, match, other]: AP = 1/2, rank-1 miss, rank-2 hit.
    assert result["mAP"] == pytest.approx(0.5)
    assert result["cmc"][0] == 0.0 and result["cmc"][1] == 1.0


def test_queries_without_a_valid_match_are_skipped():
    distmat = np.array([[0.1, 0.2], [0.3, 0.1]])
    # query 0 (id 1) has a match in another camera; query 1 (id 2) has none at all.
    result = evaluate_ranking(distmat, np.array([1, 2]), np.array([1, 3]), np.array([0, 0]), np.array([1, 1]))
    assert result["num_valid_queries"] == 1
    assert result["mAP"] == pytest.approx(1.0)


def test_bad_shapes_and_values_are_clear_errors():
    with pytest.raises(UdaReidError, match="g_pids must be a 1-D array of length 3"):
        evaluate_ranking(np.zeros((2, 3)), [1, 2], [1, 2], [0, 0], [1, 1, 1])
    with pytest.raises(UdaReidError, match="NaN or inf"):
        evaluate_ranking(np.array([[np.nan]]), [1], [1], [0], [1])
    with pytest.raises(UdaReidError, match="no query has a true match"):
        evaluate_ranking(np.array([[0.1]]), [1], [2], [0], [1])


@pytest.mark.parametrize("chunk_rows", [1, 7, 1000])
def test_ranking_in_query_chunks_gives_the_same_figures(chunk_rows):
    from uda_reid.evaluation.ranking import evaluate_ranking_chunked

    rng = np.random.default_rng(3)
    distmat = rng.random((40, 90)).round(2)  # rounded: many ties, ordered by gallery index either way
    q_pids, g_pids = rng.integers(0, 12, 40), rng.integers(0, 12, 90)
    q_cams, g_cams = rng.integers(0, 3, 40), rng.integers(0, 3, 90)
    whole = evaluate_ranking(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=20, chunk_rows=10_000)
    chunked = evaluate_ranking(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=20, chunk_rows=chunk_rows)
    streamed = evaluate_ranking_chunked(
        ((slice(s, min(s + chunk_rows, 40)), distmat[s : s + chunk_rows]) for s in range(0, 40, chunk_rows)),
        q_pids, g_pids, q_cams, g_cams, max_rank=20)
    for result in (chunked, streamed):
        assert result["mAP"] == whole["mAP"] and result["num_valid_queries"] == whole["num_valid_queries"]
        np.testing.assert_array_equal(result["cmc"], whole["cmc"])


def test_chunks_that_miss_queries_are_refused():
    from uda_reid.evaluation.ranking import evaluate_ranking_chunked

    distmat = np.random.default_rng(0).random((4, 5))
    with pytest.raises(EvaluationInputError, match="covered 2 query rows; expected 4"):
        evaluate_ranking_chunked([(slice(0, 2), distmat[:2])], np.arange(4), np.arange(5), np.zeros(4), np.ones(5))
