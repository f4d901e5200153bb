"""Retrieval metrics with the Market-1501 protocol (mAP and CMC).

For each query, gallery images of the same identity seen by the same camera are removed (they are
trivially easy and would inflate the scores); AP is taken over the remaining true matches, queries
without any remaining match are skipped, and CMC rank-k counts the first correct match.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from ..errors import UdaReidError


class EvaluationInputError(UdaReidError, ValueError):
    """The distance matrix and the id/camera arrays do not fit together."""


def _as_1d(name: str, values: object, length: int, expected: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or array.shape[0] != length:
        raise EvaluationInputError(
            f"{name} must be a 1-D array of length {length} ({expected}); got shape {array.shape}"
        )
    return array


def evaluate_ranking(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int = 50,
    chunk_rows: int = 1024,
) -> dict[str, object]:
    """Return ``{"mAP": float, "cmc": ndarray[max_rank], "num_valid_queries": int}``.

    ``distmat`` is Q×G (smaller = more similar). Ties in distance are ordered by gallery index
    (stable sort), so the result does not depend on the sorting algorithm. Queries are ranked
    ``chunk_rows`` at a time, so the sort's temporaries take ``chunk_rows × G`` whatever Q is.
    """
    distmat = np.asarray(distmat)
    if distmat.ndim != 2:
        raise EvaluationInputError(f"distmat must be a Q×G matrix; got shape {distmat.shape}")
    num_q, num_g = distmat.shape
    q_pids, g_pids, q_camids, g_camids = _checked_ids(num_q, num_g, q_pids, g_pids, q_camids, g_camids)
    return _finish(_accumulate(
        ((rows, distmat[rows]) for rows in _chunks(num_q, chunk_rows)), q_pids, g_pids, q_camids, g_camids,
        min(max_rank, num_g)))


def evaluate_ranking_chunked(
    distances: Iterable[tuple[slice, np.ndarray]],
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int = 50,
) -> dict[str, object]:
    """:func:`evaluate_ranking` over distance rows that arrive in chunks (``(rows, chunk×G)`` pairs
    covering every query once), so the Q×G matrix never exists: peak memory is one chunk's."""
    q_pids, g_pids, q_camids, g_camids = _checked_ids(len(q_pids), len(g_pids), q_pids, g_pids, q_camids, g_camids)
    return _finish(_accumulate(distances, q_pids, g_pids, q_camids, g_camids, min(max_rank, len(g_pids))),
                   expected_queries=len(q_pids))


def _chunks(num_rows: int, chunk_rows: int) -> Iterator[slice]:
    if chunk_rows < 1:
        raise EvaluationInputError(f"chunk_rows must be >= 1; got {chunk_rows}")
    for start in range(0, num_rows, chunk_rows):
        yield slice(start, min(start + chunk_rows, num_rows))


def _checked_ids(num_q, num_g, q_pids, g_pids, q_camids, g_camids):
    q_pids = _as_1d("q_pids", q_pids, num_q, "one id per query row")
    q_camids = _as_1d("q_camids", q_camids, num_q, "one camera per query row")
    g_pids = _as_1d("g_pids", g_pids, num_g, "one id per gallery column")
    g_camids = _as_1d("g_camids", g_camids, num_g, "one camera per gallery column")
    if num_q == 0 or num_g == 0:
        raise EvaluationInputError(f"need at least one query and one gallery image; got {num_q}×{num_g}")
    return q_pids, g_pids, q_camids, g_camids


def _accumulate(distances, q_pids, g_pids, q_camids, g_camids, max_rank) -> tuple[np.ndarray, float, int, int]:
    """Sums of CMC and AP over the queries with a true match, chunk by chunk."""
    cmc_sum = np.zeros(max_rank, dtype=np.float64)
    ap_sum, num_valid, seen = 0.0, 0, 0
    for rows, block in distances:
        block = np.asarray(block)
        if block.shape != (rows.stop - rows.start, len(g_pids)):
            raise EvaluationInputError(f"distance rows {rows.start}:{rows.stop} have shape {block.shape}; "
                                       f"expected {(rows.stop - rows.start, len(g_pids))}")
        if not np.isfinite(block).all():
            raise EvaluationInputError("distmat contains NaN or inf values")
        seen += block.shape[0]
        order = np.argsort(block, axis=1, kind="stable")
        matches = g_pids[order] == q_pids[rows, None]
        # Same identity under the same camera: not a valid match, not a valid distractor either.
        removed = matches & (g_camids[order] == q_camids[rows, None])
        for q in range(block.shape[0]):
            hits = matches[q][~removed[q]]
            if not hits.any():
                continue
            num_valid += 1
            first_hit = int(np.argmax(hits))
            if first_hit < max_rank:
                cmc_sum[first_hit:] += 1.0
            hit_ranks = np.flatnonzero(hits)  # 0-based ranks of the true matches
            precision_at_hits = np.arange(1, hit_ranks.size + 1) / (hit_ranks + 1.0)
            ap_sum += float(precision_at_hits.mean())
    return cmc_sum, ap_sum, num_valid, seen


def _finish(sums: tuple[np.ndarray, float, int, int], expected_queries: int | None = None) -> dict[str, object]:
    cmc_sum, ap_sum, num_valid, seen = sums
    if expected_queries is not None and seen != expected_queries:
        raise EvaluationInputError(f"the distance chunks covered {seen} query rows; expected {expected_queries}")
    if num_valid == 0:
        raise EvaluationInputError(
            "no query has a true match in the gallery under another camera; check the query/gallery ids"
        )
    return {
        "mAP": ap_sum / num_valid,
        "cmc": cmc_sum / num_valid,
        "num_valid_queries": num_valid,
    }
