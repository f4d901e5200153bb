"""Exact self-kNN on a CUDA device: blocked symmetric product, ``topk`` candidates, torch merges.

The block size comes from :func:`plan_device_block`, a function of the free memory that counts every
temporary (:func:`device_resident_bytes` + :func:`device_block_bytes`), so its arithmetic is tested
on the CPU; the search itself also runs on CPU tensors (tests).

Two products: float32 (:func:`_exact_knn_device`), and bf16 candidates re-scored in float32 and
certified by the rounding bound (:func:`_exact_knn_device_bf16`, the CPU path's method on the device:
tensor cores run bf16 an order of magnitude faster than float32). Both run with TF32 and reduced-
precision bf16 reductions switched off (:func:`float32_accumulation`): the bounds assume float32 sums.

Inputs are features already checked and L2-normalised (N×D float32 unit rows on the device); the
entry point :func:`uda_reid.clustering.knn.exact_knn` makes sure of that.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import torch

from .inputs import InvalidParameterError
from .knn_common import _INDEX_SENTINEL, _block_candidates
from .knn_rounding import bf16_candidate_bound, float32_accumulation_bound

# Bytes per entry of a block×block product, while the device path holds it: the float32 product, a
# float32 copy the reductions along its other dimension may make, the bool mask of the tie check,
# and ≤ 0.5 for the re-ranked rows with a tie at rank k (chunks of block/32 rows × 15 bytes).
DEVICE_BYTES_PER_BLOCK_ENTRY = 4 + 4 + 1 + 0.5
# Bytes per (row, neighbour) of the candidate lists while a block is merged: the block's top-k
# (value, index) for both halves, the concatenation with the kept lists, the sort permutations.
DEVICE_BYTES_PER_CANDIDATE = 96
DEVICE_BYTES_PER_ROW = 32  # the per-row reductions (minimum, tie counts) of a block
DEVICE_MIN_BLOCK = 64
DEVICE_MAX_BLOCK = 16384


def device_resident_bytes(num_samples: int, dim: int, k: int, product: str = "float32") -> int:
    """What the device path holds for the whole search: the features (and their bf16 copy) and the kept
    lists (``k``: candidates kept per row, k + margin with the bf16 product)."""
    low = num_samples * dim * 2 if product == "bf16" else 0
    return num_samples * dim * 4 + low + num_samples * k * (4 + 8) + num_samples * 4


def device_block_bytes(rows: int, k: int) -> int:
    """Peak bytes of one block pair of ``rows`` × ``rows`` on top of :func:`device_resident_bytes`."""
    return math.ceil(DEVICE_BYTES_PER_BLOCK_ENTRY * rows * rows + DEVICE_BYTES_PER_CANDIDATE * rows * k
                     + DEVICE_BYTES_PER_ROW * rows)


def plan_device_block(num_samples: int, dim: int, k: int, budget_bytes: int, product: str = "float32") -> int:
    """The largest block (rows) whose search fits in ``budget_bytes`` of device memory, features included.

    A function of the budget alone, so the arithmetic is tested on the CPU; on a GPU the budget is
    half its free memory (the rest: the allocator's fragmentation, the model, other processes).
    Raises InvalidParameterError naming the need when not even a small block fits.
    """
    resident = device_resident_bytes(num_samples, dim, k, product)
    available = budget_bytes - resident
    a, b, c = DEVICE_BYTES_PER_BLOCK_ENTRY, DEVICE_BYTES_PER_CANDIDATE * k + DEVICE_BYTES_PER_ROW, -available
    rows = int((-b + math.sqrt(max(b * b - 4 * a * c, 0.0))) / (2 * a)) if available > 0 else 0
    while rows > 0 and device_block_bytes(rows, k) > available:  # the float square root may round up
        rows -= 1
    floor = min(DEVICE_MIN_BLOCK, num_samples)
    if rows < floor:
        need = resident + device_block_bytes(floor, k)
        raise InvalidParameterError(
            f"exact kNN of {num_samples} × {dim} features (k={k}) needs at least {need / 2**20:.0f} MiB of device "
            f"memory, the budget is {budget_bytes / 2**20:.0f} MiB; free the GPU, or use --knn faiss-ivf or "
            f"--device cpu"
        )
    return min(rows, DEVICE_MAX_BLOCK, num_samples)


def device_block_size(num_samples: int, dim: int, k: int, device: torch.device, product: str = "float32") -> int:
    """Rows per block on the CUDA ``device``: the planner's answer for half its free memory."""
    free, _ = torch.cuda.mem_get_info(device)
    # The features are already on the GPU: the planner counts them, so add them back to ``free``.
    return plan_device_block(num_samples, dim, k, free // 2 + num_samples * dim * 4, product)


def _merge_candidates_torch(best_sim, best_idx, new_sim, new_idx, k):
    """Keep the k best of two candidate sets: similarity descending, ties by smaller index."""
    sims = torch.cat([best_sim, new_sim], dim=1)
    idxs = torch.cat([best_idx, new_idx], dim=1)
    by_index = torch.argsort(idxs, dim=1, stable=True)
    sims, idxs = sims.gather(1, by_index), idxs.gather(1, by_index)
    by_sim = torch.argsort(sims, dim=1, descending=True, stable=True)[:, :k]
    return sims.gather(1, by_sim), idxs.gather(1, by_sim)


def _block_halves(matrix: torch.Tensor, block_size: int) -> Iterator[tuple[torch.Tensor, int, int, int]]:
    """The symmetric blocked self-product: each block pair (I, J ≥ I) is multiplied once and yielded as
    (the block, rows of I, column offset J), then off the diagonal as (its transposed view, rows of J,
    offset I). The caller drops its reference before asking for the next, so one block is alive."""
    starts = list(range(0, matrix.shape[0], block_size))
    for bi, i0 in enumerate(starts):
        rows = matrix[i0 : i0 + block_size]
        for j0 in starts[bi:]:
            cols = matrix[j0 : j0 + block_size]
            block = rows @ cols.T
            yield block, i0, i0 + rows.shape[0], j0
            if j0 != i0:
                yield block.T, j0, j0 + cols.shape[0], i0
            del block


def _exact_knn_device(
    unit: torch.Tensor, k: int, block_size: int, track_farthest: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Symmetric blocked search with ``topk`` and the merge done by torch ops on ``unit``'s device.

    The CUDA path, also runnable on CPU tensors (tests). Each block pair (I, J ≥ I) is multiplied
    once; the rows of I take their candidates along its rows, those of J along its columns (a view:
    no transposed copy). Memory: :func:`device_resident_bytes` + :func:`device_block_bytes`.
    ``unit``: the features already checked and L2-normalised, on the device (not checked here).
    """
    n, device = unit.shape[0], unit.device
    best_sim = torch.full((n, k), -math.inf, device=device)
    best_idx = torch.full((n, k), _INDEX_SENTINEL, dtype=torch.int64, device=device)
    min_sim = torch.full((n,), math.inf, device=device)
    for half, r0, r1, offset in _block_halves(unit, block_size):
        sims, idxs = _block_candidates(half, offset, min(k, half.shape[1]))
        best_sim[r0:r1], best_idx[r0:r1] = _merge_candidates_torch(best_sim[r0:r1], best_idx[r0:r1], sims, idxs, k)
        del sims, idxs
        if track_farthest:
            min_sim[r0:r1] = torch.minimum(min_sim[r0:r1], half.min(dim=1).values)
        del half  # the next block is multiplied only once this one is gone
    farthest = min_sim.cpu().numpy() if track_farthest else None
    return best_idx.cpu().numpy(), best_sim.cpu().numpy(), farthest


@contextlib.contextmanager
def float32_accumulation() -> Iterator[None]:
    """Matrix products accumulate in float32 while the search runs (no TF32 inputs, no bf16 partial
    sums), whatever the training code chose: the certification bounds assume it."""
    matmul = torch.backends.cuda.matmul
    saved = torch.get_float32_matmul_precision(), matmul.allow_bf16_reduced_precision_reduction
    torch.set_float32_matmul_precision("highest")
    matmul.allow_bf16_reduced_precision_reduction = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved[0])
        matmul.allow_bf16_reduced_precision_reduction = saved[1]


def rescore(unit: torch.Tensor, rows: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Float32 similarity of ``rows`` (r) with their ``candidates`` (r×m): the device path's exact value,
    an elementwise product summed over the features (no matrix unit, so no TF32)."""
    return (unit[rows].unsqueeze(1) * unit[candidates]).sum(dim=2)


def _sorted_by_similarity(sims: torch.Tensor, idxs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows sorted best first: similarity descending, ties by smaller index."""
    by_index = torch.argsort(idxs, dim=1, stable=True)
    sims, idxs = sims.gather(1, by_index), idxs.gather(1, by_index)
    by_sim = torch.argsort(sims, dim=1, descending=True, stable=True)
    return sims.gather(1, by_sim), idxs.gather(1, by_sim)


def _candidate_lists(low: torch.Tensor, kk: int, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``kk`` largest bf16 products of every row (blocked, symmetric), ties broken anyhow: a sample
    left out has a product ≤ the row's smallest kept one, which is all the certification needs."""
    n, device = low.shape[0], low.device
    best_val = torch.full((n, kk), -math.inf, device=device)
    best_idx = torch.full((n, kk), _INDEX_SENTINEL, dtype=torch.int64, device=device)
    for half, r0, r1, offset in _block_halves(low, block_size):
        values, columns = half.topk(min(kk, half.shape[1]), dim=1)
        del half
        merged_val = torch.cat([best_val[r0:r1], values.float()], dim=1)
        merged_idx = torch.cat([best_idx[r0:r1], columns + offset], dim=1)
        top_val, top = merged_val.topk(kk, dim=1)
        best_val[r0:r1], best_idx[r0:r1] = top_val, merged_idx.gather(1, top)
        del values, columns, merged_val, merged_idx, top_val, top
    return best_val, best_idx


def _rescore_chunk_rows(kk: int, dim: int, block_size: int) -> int:
    """Rows re-scored at a time: their gathered candidates (rows×kk×dim float32, and the product) take
    no more than a block of the search did."""
    return max(1, int(DEVICE_BYTES_PER_BLOCK_ENTRY * block_size * block_size) // (2 * 4 * kk * dim))


def _recheck_rows_device(unit: torch.Tensor, rows: torch.Tensor, k: int, kk: int, block_size: int):
    """Exact lists of the ``rows`` the bf16 margin could not certify: float32 candidates of the full row,
    re-scored; a row still undecided (near-ties within float32 rounding) is re-scored against every sample."""
    n, dim = unit.shape
    slack = 2 * float32_accumulation_bound(dim)  # the product and the re-score each within γ_D of the exact value
    out_idx = torch.empty((len(rows), k), dtype=torch.int64, device=unit.device)
    out_sim = torch.empty((len(rows), k), device=unit.device)
    chunk = max(1, min(len(rows), block_size * block_size // n))
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        values, candidates = _block_candidates(unit[part] @ unit.T, 0, kk)
        sims, candidates = _sorted_by_similarity(rescore(unit, part, candidates), candidates)
        undecided = (~(values[:, -1].double() + slack < sims[:, k - 1].double())).nonzero().flatten()
        if kk < n:
            for row in undecided.tolist():  # every sample, in column chunks
                everyone = torch.cat([rescore(unit, part[row : row + 1], torch.arange(c, min(n, c + block_size),
                                                                                       device=unit.device)[None])
                                      for c in range(0, n, block_size)], dim=1)
                order = torch.argsort(everyone, dim=1, descending=True, stable=True)[:, :k]  # ties: column order
                candidates[row, :k], sims[row, :k] = order[0], everyone[0, order[0]]
        out_idx[start : start + len(part)], out_sim[start : start + len(part)] = candidates[:, :k], sims[:, :k]
    return out_idx, out_sim


def _exact_knn_device_bf16(
    unit: torch.Tensor, k: int, block_size: int, margin: int | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Exact self-kNN from bf16 candidates, on ``unit``'s device (the CPU path's method, docs/clustering.md):

    1. the blocked bf16 product keeps the ``k + margin`` largest products of every row (``margin``
       default k);
    2. every candidate is re-scored in float32 (:func:`rescore`) and the rows sorted (similarity
       descending, then index);
    3. a row is certain when no sample left out can beat its k-th neighbour: its bf16 product is at most
       the row's smallest kept one and differs from the exact value by at most
       :func:`~.knn_rounding.bf16_candidate_bound`;
    4. uncertain rows are searched again in float32 (:func:`_recheck_rows_device`).

    ``block_size`` from :func:`plan_device_block` with ``k + margin`` candidates and ``product="bf16"``.
    Returns (indices, similarities, rows re-searched).
    """
    n, dim = unit.shape
    kk = min(n, k + (k if margin is None else margin))
    low = unit.to(torch.bfloat16)
    floor_val, candidates = _candidate_lists(low, kk, block_size)
    floor = floor_val[:, -1].double()  # topk keeps them sorted: the last is the smallest kept product
    indices = torch.empty((n, k), dtype=torch.int64, device=unit.device)
    sims = torch.empty((n, k), device=unit.device)
    chunk = _rescore_chunk_rows(kk, dim, block_size)
    for start in range(0, n, chunk):
        part = torch.arange(start, min(n, start + chunk), device=unit.device)
        scored, listed = _sorted_by_similarity(rescore(unit, part, candidates[part]), candidates[part])
        indices[part], sims[part] = listed[:, :k], scored[:, :k]
    del floor_val, candidates
    rechecked = 0
    if kk < n:
        residual = torch.cat([(unit[s : s + 8192] - low[s : s + 8192].float()).double().norm(dim=1)
                              for s in range(0, n, 8192)])
        bound = bf16_candidate_bound(residual, floor, dim)
        uncertain = (~(floor + bound < sims[:, k - 1].double())).nonzero().flatten()
        rechecked = int(uncertain.numel())
        if rechecked:
            indices[uncertain], sims[uncertain] = _recheck_rows_device(unit, uncertain, k, kk, block_size)
    return indices.cpu().numpy(), sims.cpu().numpy(), rechecked
