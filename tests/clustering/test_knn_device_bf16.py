"""The device path's bf16 candidates (tensor cores), run here on CPU tensors: re-scored in float32 and
certified by the rounding bound, its lists are those of the float32 search, within the memory its
planner counted; on a GPU, ``exact_knn`` takes this path by default."""

import numpy as np
import pytest
import torch
from clustering_inputs import clustered_features
from clustering_stage import synthetic_features
from live_tensor_bytes import LiveTensorBytes

from uda_reid.clustering.inputs import l2_normalised
from uda_reid.clustering.knn import exact_knn, plan_device_block
from uda_reid.clustering.knn_gpu import (
    _exact_knn_device_bf16,
    device_block_bytes,
    device_resident_bytes,
    float32_accumulation,
    rescore,
)

MIB = 1 << 20


def float32_lists(features, k):
    return exact_knn(features, k, device="cpu", product="float32")


def brute_force_by_rescore(unit: torch.Tensor, k: int) -> np.ndarray:
    """Every pair scored by the device path's own float32 re-score, sorted with ties by index."""
    n = unit.shape[0]
    everyone = torch.cat([rescore(unit, torch.arange(i, i + 1), torch.arange(n)[None]) for i in range(n)])
    return torch.argsort(everyone, dim=1, descending=True, stable=True)[:, :k].numpy()


def test_bf16_candidates_on_the_device_path_give_the_float32_lists():
    features, _ = synthetic_features(3000, 256, seed=1)
    unit = l2_normalised(features)
    indices, sims, rechecked = _exact_knn_device_bf16(unit, 30, 700)
    exact = float32_lists(features, 30)
    np.testing.assert_array_equal(indices, exact.indices)
    np.testing.assert_allclose(sims, exact.similarities, atol=2e-6)
    assert rechecked < 0.05 * len(features)  # the default margin (k) almost always suffices


def test_near_ties_below_bf16_resolution_are_rechecked_on_the_device_path_and_exact():
    rng = np.random.default_rng(2)
    centre = rng.standard_normal(64).astype(np.float32)
    near = centre + 1e-4 * rng.standard_normal((400, 64)).astype(np.float32)
    features = np.concatenate([near, rng.standard_normal((600, 64)).astype(np.float32)])
    unit = l2_normalised(features)
    indices, _, rechecked = _exact_knn_device_bf16(unit, 20, 256)
    assert rechecked >= 400
    np.testing.assert_array_equal(indices, brute_force_by_rescore(unit, 20))


def test_without_a_margin_the_device_path_rechecks_every_row_and_stays_exact():
    features, _ = clustered_features(n=500, seed=7)
    unit = l2_normalised(features)
    indices, _, rechecked = _exact_knn_device_bf16(unit, 15, 128, margin=0)
    assert rechecked > 0.9 * len(features)
    np.testing.assert_array_equal(indices, brute_force_by_rescore(unit, 15))


def test_duplicates_cut_at_rank_k_keep_index_order_on_the_device_bf16_path():
    features, _ = clustered_features(n=800, seed=6)
    features[200:240] = features[9]  # 41 identical rows, k = 30: the tie at rank k decides by index
    indices, _, _ = _exact_knn_device_bf16(l2_normalised(features), 30, 128)
    np.testing.assert_array_equal(indices[9], [9, *range(200, 229)])
    np.testing.assert_array_equal(indices[239], [9, *range(200, 229)])
    np.testing.assert_array_equal(indices, float32_lists(features, 30).indices)


def test_the_device_bf16_path_stays_within_its_plan():
    features, _ = clustered_features(n=1500, seed=5)
    unit = l2_normalised(features)
    n, dim, k = unit.shape[0], unit.shape[1], 20
    kept = 2 * k
    budget = device_resident_bytes(n, dim, kept, "bf16") + 4 * MIB
    rows = plan_device_block(n, dim, kept, budget, "bf16")
    assert rows < n  # several blocks, both halves of the symmetric product
    with LiveTensorBytes(existing=[unit]) as memory:
        indices, _, _ = _exact_knn_device_bf16(unit, k, rows)
    assert memory.peak <= budget - n * dim * 4  # the float32 features were there before the search
    assert memory.peak > device_block_bytes(rows, kept) // 6  # the measurement saw the blocks
    # by the path's own float32 score: two pairs here differ from ``dot_rows`` in the last bit
    np.testing.assert_array_equal(indices, brute_force_by_rescore(unit, k))


def test_the_search_accumulates_in_float32_and_restores_the_callers_settings():
    matmul = torch.backends.cuda.matmul
    before = torch.get_float32_matmul_precision(), matmul.allow_bf16_reduced_precision_reduction
    torch.set_float32_matmul_precision("high")  # a training run may have allowed TF32
    matmul.allow_bf16_reduced_precision_reduction = True
    try:
        with float32_accumulation():
            assert torch.get_float32_matmul_precision() == "highest"
            assert matmul.allow_bf16_reduced_precision_reduction is False
        assert torch.get_float32_matmul_precision() == "high"
        assert matmul.allow_bf16_reduced_precision_reduction is True
    finally:
        torch.set_float32_matmul_precision(before[0])
        matmul.allow_bf16_reduced_precision_reduction = before[1]


@pytest.mark.cuda
@pytest.mark.parametrize("product", ["auto", "float32"])
def test_on_a_gpu_exact_knn_gives_the_cpu_lists(product):
    features, _ = synthetic_features(20_000, 256, seed=3)
    on_gpu = exact_knn(features, 30, device="cuda", product=product)
    assert on_gpu.product == ("bf16" if product == "auto" else "float32")
    cpu = float32_lists(features, 30)
    # the GPU's float32 sums may order two neighbours within a last bit the other way, nothing more
    assert (on_gpu.indices != cpu.indices).mean() < 1e-4
    np.testing.assert_allclose(on_gpu.similarities, cpu.similarities, atol=2e-6)


def test_a_runs_device_reaches_the_exact_knn_even_with_a_gpu_present(monkeypatch):
    """``--device cpu`` keeps the clustering on the CPU: cluster_stage hands the run's device to the kNN,
    and ``auto`` decides by that device, not by whether the machine has a GPU."""
    import uda_reid.clustering.knn as knn_module
    from uda_reid.clustering import cluster_stage
    from uda_reid.clustering.knn import EXACT_MAX_MULTIPLY_ADDS, resolve_backend

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    big = int((2 * EXACT_MAX_MULTIPLY_ADDS / 256) ** 0.5) + 1
    assert resolve_backend("auto", big, 256) == "torch"  # a GPU somewhere: exact
    assert resolve_backend("auto", big, 256, "cpu") == "faiss-ivf"  # the run's CPU decides
    assert resolve_backend("auto", big, 256, "cuda") == "torch"
    seen = []
    real = knn_module.KNN_BACKENDS.get("torch")

    def spy(features, k, **options):
        seen.append(options.get("device"))
        return real(features, k, **{**options, "device": "cpu"})

    monkeypatch.setattr(knn_module.KNN_BACKENDS, "get", lambda name: spy)
    features, _ = clustered_features(n=200, seed=1)
    cluster_stage(features, k1=10, k2=3, clusterer_options={"eps": 0.5, "min_samples": 2}, device=torch.device("cpu"))
    assert seen == [torch.device("cpu")]
