"""Exact self-kNN on the CPU: a blocked symmetric product merged into per-row heaps by numba.

Each block pair (I, J ≥ I) of the self-product is multiplied once and updates the top-k of the rows
of I *and* of J (half the arithmetic); the merge rejects most candidates with one comparison. The
product runs in bf16 where the CPU has bf16 arithmetic (about twice float32's speed), keeping a
margin of extra candidates that are re-scored in float32 by ``dot_rows`` and certified by the
rounding bound, so the lists are those of float32 search (:func:`_exact_knn_cpu`).

Inputs are features already checked and L2-normalised (N×D float32 unit rows on the CPU); the entry
point :func:`uda_reid.clustering.knn.exact_knn` makes sure of that.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
from numba import njit, prange

from .knn_common import _INDEX_SENTINEL, _beats, _block_candidates, dot_rows
from .knn_rounding import bf16_candidate_bound, float32_accumulation_bound


def _available_memory_bytes() -> int:
    with contextlib.suppress(OSError):  # no /proc: assume 4 GiB
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    return 4 << 30


def cpu_block_size(num_samples: int) -> int:
    """Rows per block on the CPU: a block×block float32 product uses a small share of free memory.

    4096 keeps the CPU product near its peak (measured: ≥ 2048 rows reach ~380 GFLOP/s here) while a
    block costs 64 MiB; less free memory shrinks it.
    """
    side = int(math.sqrt(max(_available_memory_bytes() // 16, 1) / 4))
    return min(max(256, min(4096, side)), num_samples)


# ----------------------------------------------------------------------------------------------
# CPU merge of one similarity block into per-row heaps (numba).
# Heap order: the root (slot 0) is the *worst* kept neighbour: lower similarity, or equal
# similarity and larger index. A candidate enters when it beats the root.


@njit(cache=True, inline="always")
def _replace_root(heap_sim, heap_idx, row, sim, idx):
    k = heap_sim.shape[1]
    pos = 0
    while True:
        child = 2 * pos + 1
        if child >= k:
            break
        right = child + 1
        if right < k and _beats(heap_sim[row, child], heap_idx[row, child], heap_sim[row, right], heap_idx[row, right]):
            child = right  # the right child is worse
        if _beats(sim, idx, heap_sim[row, child], heap_idx[row, child]):
            heap_sim[row, pos] = heap_sim[row, child]
            heap_idx[row, pos] = heap_idx[row, child]
            pos = child
        else:
            break
    heap_sim[row, pos] = sim
    heap_idx[row, pos] = idx


@njit(cache=True, parallel=True)
def _merge_block(block, row0, col0, diagonal, heap_sim, heap_idx, threshold, min_sim, track_min):
    """Offer every entry of ``block`` (rows row0.., columns col0..) to both rows' heaps.

    On a diagonal block only the upper triangle (c ≥ r) is read, so s(i, j) and s(j, i) are the very
    same float and the neighbour relation is computed once per pair. ``threshold[row]`` mirrors the
    heap root's similarity in a contiguous array, so a branch-free (vectorised) pass can skip the
    rows and column strips where no entry can enter a heap, which is nearly all of them after the
    first blocks.
    """
    n_rows, n_cols = block.shape
    for r in prange(n_rows):
        row = row0 + r
        start = r if diagonal else 0
        if track_min:
            smallest = min_sim[row]
            for c in range(start, n_cols):
                smallest = min(smallest, block[r, c])
            min_sim[row] = smallest
        limit = threshold[row]
        hits = 0
        for c in range(start, n_cols):
            hits += block[r, c] >= limit
        if hits == 0:
            continue
        for c in range(start, n_cols):
            s = block[r, c]
            if s >= threshold[row]:
                j = col0 + c
                if _beats(s, j, heap_sim[row, 0], heap_idx[row, 0]):
                    _replace_root(heap_sim, heap_idx, row, s, j)
                    threshold[row] = heap_sim[row, 0]
    # Columns: each task owns a strip of columns and reads the block row by row (contiguous).
    strip = 256
    n_strips = (n_cols + strip - 1) // strip
    for t in prange(n_strips):
        c_begin = t * strip
        c_end = min(n_cols, c_begin + strip)
        for r in range(n_rows):
            i = row0 + r
            first = c_begin
            if diagonal and first <= r:
                first = r + 1
            if track_min:
                for c in range(first, c_end):
                    min_sim[col0 + c] = min(min_sim[col0 + c], block[r, c])
            hits = 0
            for c in range(first, c_end):
                hits += block[r, c] >= threshold[col0 + c]
            if hits == 0:
                continue
            for c in range(first, c_end):
                s = block[r, c]
                row = col0 + c
                if s >= threshold[row] and _beats(s, i, heap_sim[row, 0], heap_idx[row, 0]):
                    _replace_root(heap_sim, heap_idx, row, s, i)
                    threshold[row] = heap_sim[row, 0]


@njit(cache=True, parallel=True)
def _sort_heaps(heap_sim, heap_idx):
    """Sort every row best-first: similarity descending, then index ascending (insertion sort, k small)."""
    n, k = heap_sim.shape
    for row in prange(n):
        for a in range(1, k):
            s = heap_sim[row, a]
            j = heap_idx[row, a]
            b = a - 1
            while b >= 0 and _beats(s, j, heap_sim[row, b], heap_idx[row, b]):
                heap_sim[row, b + 1] = heap_sim[row, b]
                heap_idx[row, b + 1] = heap_idx[row, b]
                b -= 1
            heap_sim[row, b + 1] = s
            heap_idx[row, b + 1] = j


def _blocked_heaps(product_rows: torch.Tensor, kk: int, block_size: int, track_farthest: bool):
    """Top-``kk`` per row (heaps, unsorted) of the blocked symmetric product of ``product_rows``.

    ``product_rows`` is float32, or bf16 for candidate search: the bf16 product (about twice the
    float32 speed on CPUs with AVX-512 BF16 / AMX) is widened to float32 for the numba merge.
    Returns (heap similarities, heap indices, per-row worst kept similarity, per-row minimum).
    """
    n = product_rows.shape[0]
    heap_sim = np.full((n, kk), -np.inf, dtype=np.float32)
    heap_idx = np.full((n, kk), _INDEX_SENTINEL, dtype=np.int32)
    threshold = np.full(n, -np.inf, dtype=np.float32)
    min_sim = np.full(n, np.inf, dtype=np.float32)
    buffer = torch.empty(block_size * block_size, dtype=torch.float32)
    reduced = product_rows.dtype != torch.float32
    low_buffer = torch.empty(block_size * block_size, dtype=product_rows.dtype) if reduced else None
    starts = list(range(0, n, block_size))
    for bi, i0 in enumerate(starts):
        rows = product_rows[i0 : i0 + block_size]
        for j0 in starts[bi:]:
            cols = product_rows[j0 : j0 + block_size]
            shape = (rows.shape[0], cols.shape[0])
            block = buffer[: shape[0] * shape[1]].view(shape)
            if reduced:
                low = low_buffer[: shape[0] * shape[1]].view(shape)
                torch.mm(rows, cols.T, out=low)
                block.copy_(low)
            else:
                torch.mm(rows, cols.T, out=block)
            _merge_block(block.numpy(), i0, j0, i0 == j0, heap_sim, heap_idx, threshold, min_sim, track_farthest)
    return heap_sim, heap_idx, threshold, min_sim


@njit(cache=True, parallel=True)
def _rescore(unit, candidates, sims):
    """``sims[i, a] = dot_rows(unit, i, candidates[i, a])``: the exact float32 similarity of every candidate."""
    n, m = candidates.shape
    for i in prange(n):
        for a in range(m):
            sims[i, a] = dot_rows(unit, i, candidates[i, a])


@njit(cache=True, parallel=True)
def _rescore_rows(unit, rows, candidates, sims):
    for t in prange(rows.shape[0]):
        for a in range(candidates.shape[1]):
            sims[t, a] = dot_rows(unit, rows[t], candidates[t, a])


@njit(cache=True, parallel=True)
def _scan_rows(unit, rows, k, out_idx, out_sim):
    """Exact top-k of ``rows`` against every sample by ``dot_rows``, ties by smaller index (last resort)."""
    n = unit.shape[0]
    for t in prange(rows.shape[0]):
        sims = np.empty(n, dtype=np.float32)
        for j in range(n):
            sims[j] = dot_rows(unit, rows[t], j)
        order = np.argsort(-sims, kind="mergesort")[:k]  # stable: equal similarities keep index order
        for a in range(k):
            out_idx[t, a] = order[a]
            out_sim[t, a] = sims[order[a]]


def _recheck_rows(unit: torch.Tensor, rows: np.ndarray, k: int, kk: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact lists of ``rows`` whose candidate margin was too thin: float32 candidates of the full row,
    re-scored by ``dot_rows``; rows still undecided (ties within the float32 rounding) scan every sample."""
    unit_np = unit.numpy()
    slack = 2 * float32_accumulation_bound(unit.shape[1])  # matmul and dot_rows each within γ_D of the exact value
    out_idx = np.empty((len(rows), k), dtype=np.int64)
    out_sim = np.empty((len(rows), k), dtype=np.float32)
    for start in range(0, len(rows), 256):
        chunk = rows[start : start + 256]
        values, columns = _block_candidates(unit[torch.from_numpy(chunk)] @ unit.T, 0, kk)
        candidates = columns.numpy().astype(np.int32)
        sims = np.empty(candidates.shape, dtype=np.float32)
        _rescore_rows(unit_np, chunk, candidates, sims)
        _sort_heaps(sims, candidates)
        floor = values[:, -1].double().numpy()
        undecided = np.nonzero(~(floor + slack < sims[:, k - 1]))[0] if kk < unit.shape[0] else np.empty(0, np.int64)
        if len(undecided):
            scan_idx = np.empty((len(undecided), k), dtype=np.int64)
            scan_sim = np.empty((len(undecided), k), dtype=np.float32)
            _scan_rows(unit_np, chunk[undecided], k, scan_idx, scan_sim)
            candidates[undecided, :k], sims[undecided, :k] = scan_idx, scan_sim
        out_idx[start : start + len(chunk)] = candidates[:, :k]
        out_sim[start : start + len(chunk)] = sims[:, :k]
    return out_idx, out_sim


def _exact_knn_cpu(
    unit: torch.Tensor, k: int, block_size: int, *, product: str = "float32", margin: int | None = None,
    track_farthest: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    """Exact self-kNN on the CPU: candidates from a blocked product, exact lists from ``dot_rows``.

    1. The blocked symmetric product (float32, or bf16: about twice as fast on CPUs with AVX-512
       BF16 / AMX) keeps the best ``k + margin`` candidates of every row.
    2. Each candidate is re-scored by ``dot_rows`` (float32, one fixed order) and the rows sorted
       (similarity descending, then index): so both products give the very same lists.
    3. A row is certain when no sample left out can beat its k-th neighbour: a left-out sample's
       product is at most the row's worst kept one, and differs from ``dot_rows`` by at most the
       rounding bound: γ_D for each float32 accumulation; with bf16 also the inputs' rounding
       (‖r_i‖ + ‖r_j‖ + ‖r_i‖‖r_j‖ by Cauchy-Schwarz, r = x − bf16(x)) and half an ulp of the output.
    4. Uncertain rows are searched again in float32 (:func:`_recheck_rows`).

    ``unit``: the features already checked and L2-normalised (N×D float32 CPU tensor; not checked here).

    Returns (indices, similarities, smallest similarity per row or None, rows re-searched).
    """
    n, dim = unit.shape
    margin = (k if product == "bf16" else 8) if margin is None else margin
    kk = min(n, k + margin)
    low = unit.to(torch.bfloat16) if product == "bf16" else unit
    _, heap_idx, floor, min_sim = _blocked_heaps(low, kk, block_size, track_farthest)
    unit_np = np.ascontiguousarray(unit.numpy())
    sims = np.empty(heap_idx.shape, dtype=np.float32)
    _rescore(unit_np, heap_idx, sims)
    _sort_heaps(sims, heap_idx)
    farthest = min_sim if track_farthest else None
    if kk == n:  # every sample is a candidate: nothing was left out
        return heap_idx[:, :k].astype(np.int64), np.ascontiguousarray(sims[:, :k]), farthest, 0
    if product == "bf16":
        residual = np.concatenate([(unit[s : s + 8192] - low[s : s + 8192].float()).double().norm(dim=1).numpy()
                                   for s in range(0, n, 8192)])  # in chunks: no N×D temporaries
        bound = bf16_candidate_bound(residual, floor, dim)
    else:
        bound = 2 * float32_accumulation_bound(dim) * (1 + 1e-6)
    uncertain = np.nonzero(~(floor.astype(np.float64) + bound < sims[:, k - 1]))[0]
    indices, similarities = heap_idx[:, :k].astype(np.int64), np.ascontiguousarray(sims[:, :k])
    if len(uncertain):
        indices[uncertain], similarities[uncertain] = _recheck_rows(unit, uncertain, k, kk)
    return indices, similarities, farthest, len(uncertain)
