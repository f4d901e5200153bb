"""The GPU kNN path sized by arithmetic: the block planner is a function of a memory budget, and the
path, run here on CPU tensors, never holds more than the planner counted (measured op by op)."""

import numpy as np
import pytest
import torch
from clustering_inputs import clustered_features
from live_tensor_bytes import LiveTensorBytes

from uda_reid.clustering.inputs import InvalidParameterError, l2_normalised
from uda_reid.clustering.knn import (
    DEVICE_MAX_BLOCK,
    choose_block_size,
    device_block_bytes,
    device_resident_bytes,
    exact_knn,
    plan_device_block,
)
from uda_reid.clustering.knn_cpu import _blocked_heaps, _sort_heaps
from uda_reid.clustering.knn_gpu import _exact_knn_device

MIB = 1 << 20


@pytest.mark.parametrize("budget_mib", [3, 8, 40, 700, 24_000])
def test_the_planned_block_is_the_largest_that_fits_the_budget(budget_mib):
    n, dim, k = 3000, 64, 30
    budget = budget_mib * MIB
    rows = plan_device_block(n, dim, k, budget)
    resident = device_resident_bytes(n, dim, k)
    assert resident + device_block_bytes(rows, k) <= budget
    assert rows == min(n, DEVICE_MAX_BLOCK) or resident + device_block_bytes(rows + 1, k) > budget


def test_a_budget_below_the_features_is_refused_with_the_need_and_the_ways_out():
    with pytest.raises(InvalidParameterError, match=r"needs at least \d+ MiB .* budget is 1 MiB.*faiss-ivf.*--device cpu"):
        plan_device_block(20_000, 256, 30, 1 * MIB)


def test_on_a_gpu_the_budget_is_half_the_free_memory_plus_the_resident_features(monkeypatch):
    free = 2_000 * MIB
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 16_000 * MIB))
    chosen = choose_block_size(50_000, torch.device("cuda"), dim=2048, k=30)
    assert chosen == plan_device_block(50_000, 2048, 30, free // 2 + 50_000 * 2048 * 4)


@pytest.mark.parametrize("duplicates", [False, True])
def test_the_device_path_stays_within_its_plan_and_equals_the_cpu_path(duplicates):
    features, _ = clustered_features(n=1500, seed=5)
    if duplicates:  # 41 exact copies, more than k: ties cut at rank k, taken in index order
        features[200:240] = features[9]
    unit = l2_normalised(features)
    n, dim, k = unit.shape[0], unit.shape[1], 30
    budget = device_resident_bytes(n, dim, k) + 4 * MIB
    rows = plan_device_block(n, dim, k, budget)
    assert rows < n  # several blocks, both halves of the symmetric product
    with LiveTensorBytes(existing=[unit]) as memory:
        indices, sims, farthest = _exact_knn_device(unit, k, rows, True)
    assert memory.peak <= budget - n * dim * 4  # the features were on the device before the search
    assert memory.peak > device_block_bytes(rows, k) // 3  # the measurement saw the blocks
    # The CPU heaps over the very same block products (bit-equal similarities, so ties agree too)
    heap_sim, heap_idx, _, smallest = _blocked_heaps(unit, k, rows, True)
    _sort_heaps(heap_sim, heap_idx)
    np.testing.assert_array_equal(indices, heap_idx)
    np.testing.assert_array_equal(sims, heap_sim)
    np.testing.assert_array_equal(farthest, smallest)
    if duplicates:
        np.testing.assert_array_equal(indices[9], [9, *range(200, 229)])
        np.testing.assert_array_equal(indices[239], [9, *range(200, 229)])


def test_ties_cut_at_rank_k_inside_a_block_are_taken_in_index_order():
    rng = np.random.default_rng(0)
    unit = np.zeros((300, 12), dtype=np.float32)
    for row in unit:  # entries of 0.5 on 4 of 12 dims: every product is exact, ties everywhere
        row[rng.choice(12, 4, replace=False)] = 0.5
    indices, _, _ = _exact_knn_device(torch.from_numpy(unit), 10, 64, False)
    np.testing.assert_array_equal(indices, exact_knn(unit, 10, block_size=64, device="cpu").indices)
