"""Exact self-kNN on a CUDA device: blocked symmetric product, ``topk`` candidates, torch merges.

The block size comes from :func:`plan_device_block`, a function of the free memory that counts every
temporary (:func:`device_resident_bytes` + :func:`device_block_bytes`), so its arithmetic is tested
on the CPU; the search itself also runs on CPU tensors (tests).

Inputs are features already checked and L2-normalised (N×D float32 unit rows on the device); the
entry point :func:`uda_reid.clustering.knn.exact_knn` makes sure of that.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .inputs import InvalidParameterError
from .knn_common import _INDEX_SENTINEL, _block_candidates

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


def device_resident_bytes(num_samples: int, dim: int, k: int) -> int:
    """What the device path holds for the whole search: the features and the kept lists."""
    return num_samples * dim * 4 + num_samples * k * (4 + 8) + num_samples * 4


def device_block_bytes(rows: int, k: int) -> int:
    """Peak bytes of one block pair of ``rows`` × ``rows`` on top of :func:`device_resident_bytes`."""
    return math.ceil(DEVICE_BYTES_PER_BLOCK_ENTRY * rows * rows + DEVICE_BYTES_PER_CANDIDATE * rows * k
                     + DEVICE_BYTES_PER_ROW * rows)


def plan_device_block(num_samples: int, dim: int, k: int, budget_bytes: int) -> int:
    """The largest block (rows) whose search fits in ``budget_bytes`` of device memory, features included.

    A function of the budget alone, so the arithmetic is tested on the CPU; on a GPU the budget is
    half its free memory (the rest: the allocator's fragmentation, the model, other processes).
    Raises InvalidParameterError naming the need when not even a small block fits.
    """
    available = budget_bytes - device_resident_bytes(num_samples, dim, k)
    a, b, c = DEVICE_BYTES_PER_BLOCK_ENTRY, DEVICE_BYTES_PER_CANDIDATE * k + DEVICE_BYTES_PER_ROW, -available
    rows = int((-b + math.sqrt(max(b * b - 4 * a * c, 0.0))) / (2 * a)) if available > 0 else 0
    while rows > 0 and device_block_bytes(rows, k) > available:  # the float square root may round up
        rows -= 1
    floor = min(DEVICE_MIN_BLOCK, num_samples)
    if rows < floor:
        need = device_resident_bytes(num_samples, dim, k) + device_block_bytes(floor, k)
        raise InvalidParameterError(
            f"exact kNN of {num_samples} × {dim} features (k={k}) needs at least {need / 2**20:.0f} MiB of device "
            f"memory, the budget is {budget_bytes / 2**20:.0f} MiB; free the GPU, or use --knn faiss-ivf or "
            f"--device cpu"
        )
    return min(rows, DEVICE_MAX_BLOCK, num_samples)


def device_block_size(num_samples: int, dim: int, k: int, device: torch.device) -> int:
    """Rows per block on the CUDA ``device``: the planner's answer for half its free memory."""
    free, _ = torch.cuda.mem_get_info(device)
    # The features are already on the GPU: the planner counts them, so add them back to ``free``.
    return plan_device_block(num_samples, dim, k, free // 2 + num_samples * dim * 4)


def _merge_candidates_torch(best_sim, best_idx, new_sim, new_idx, k):
    """Keep the k best of two candidate sets: similarity descending, ties by smaller index."""
    sims = torch.cat([best_sim, new_sim], dim=1)
    idxs = torch.cat([best_idx, new_idx], dim=1)
    by_index = torch.argsort(idxs, dim=1, stable=True)
    sims, idxs = sims.gather(1, by_index), idxs.gather(1, by_index)
    by_sim = torch.argsort(sims, dim=1, descending=True, stable=True)[:, :k]
    return sims.gather(1, by_sim), idxs.gather(1, by_sim)


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
    starts = list(range(0, n, block_size))
    for bi, i0 in enumerate(starts):
        rows = unit[i0 : i0 + block_size]
        i1 = i0 + rows.shape[0]
        for j0 in starts[bi:]:
            cols = unit[j0 : j0 + block_size]
            j1 = j0 + cols.shape[0]
            block = rows @ cols.T
            halves = [(block, i0, i1, j0)] + ([(block.T, j0, j1, i0)] if j0 != i0 else [])
            for half, r0, r1, offset in halves:
                sims, idxs = _block_candidates(half, offset, min(k, half.shape[1]))
                best_sim[r0:r1], best_idx[r0:r1] = _merge_candidates_torch(best_sim[r0:r1], best_idx[r0:r1], sims, idxs, k)
                del sims, idxs
                if track_farthest:
                    min_sim[r0:r1] = torch.minimum(min_sim[r0:r1], half.min(dim=1).values)
            del block, halves
    farthest = min_sim.cpu().numpy() if track_farthest else None
    return best_idx.cpu().numpy(), best_sim.cpu().numpy(), farthest
