"""Self k-nearest-neighbour search on L2-normalised features (step 1 of the clustering stage).

Neighbours are ranked by cosine similarity (equivalently by squared Euclidean distance ``2 − 2·s`` on
unit vectors), the sample itself included (normally at rank 0), as in docs/methods.md §1.

Backends (``KNN_BACKENDS``, option ``--knn``):

* ``torch`` — exact. Blocked matrix product that never holds an N×N matrix. The self-product is
  symmetric, so each block pair (I, J ≥ I) is multiplied once and updates the top-k of the rows of I
  *and* of J (half the arithmetic). On CPU the block is merged into per-row heaps by a numba kernel
  that rejects most candidates with one comparison; the product runs in bf16 where the CPU has bf16
  arithmetic (about twice float32's speed), keeping a margin of extra candidates that are re-scored
  in float32 and certified by the rounding bound, so the lists are those of float32 search
  (:func:`.knn_cpu._exact_knn_cpu`). On CUDA each block's candidates come from ``topk`` and the block size
  from :func:`plan_device_block`, a function of the free memory that counts every temporary; the
  product is bf16 there too (tensor cores), with the same re-scoring and certification
  (:func:`.knn_gpu._exact_knn_device_bf16`).
* ``faiss-flat`` — exact, faiss brute force (on the process's own GPU when faiss has GPUs).
* ``faiss-ivf`` / ``faiss-hnsw`` — approximate, for N in the millions: a faiss index proposes the
  lists, then neighbour descent (each row is offered its neighbours' neighbours and the rows that
  list it, with exact similarities) recovers what the index missed.
* ``auto`` — ``torch`` when the exact product costs at most ``EXACT_MAX_MULTIPLY_ADDS`` (≈ 50 s on
  two CPU cores) or a GPU is available, otherwise ``faiss-ivf``.

Ties: the exact ``torch`` backend orders neighbours by similarity, then by smaller index, so equal
similarities (duplicate images) give the same lists on every run, block size and product. On the
CPU the similarity is ``dot_rows`` (float32, one fixed order); the CUDA path ranks by its float32
block products or, with bf16, by its float32 re-score (:func:`.knn_gpu.rescore`), which may order two
neighbours within ~1e-7 of each other the other way. The faiss
backends apply the same order to the neighbours they return, but which of several tied candidates at
rank k survives is faiss's choice.

Modules: this one is the entry point (:func:`knn_search`, :func:`resolve_backend`, the ``torch``
backend :func:`exact_knn`, which picks the CPU or the device path) and re-exports the public names of
the others, so import from here. :mod:`.knn_common` holds :class:`NeighborLists`, ``KNN_BACKENDS``,
the tie rule and ``dot_rows``; :mod:`.knn_cpu` the CPU path; :mod:`.knn_gpu` the CUDA path and its
memory planner; :mod:`.knn_faiss` the faiss backends and neighbour descent.

Features are checked and L2-normalised once, by whichever of these functions the caller enters
(:func:`~uda_reid.clustering.inputs.unit_features`); :func:`knn_search` hands the checked
:class:`~uda_reid.clustering.inputs.UnitFeatures` to the backend, which takes them as they are. A
registered backend must accept both raw features and ``UnitFeatures`` (calling ``unit_features`` on
its input does that at no cost).
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from ..precision import cpu_has_bf16
from .inputs import (
    FeatureArray,
    InvalidParameterError,
    UnitFeatures,
    check_neighbor_count,
    unit_features,
)
from .knn_common import KNN_BACKENDS, KnnBackend, NeighborLists, dot_rows
from .knn_cpu import _exact_knn_cpu, cpu_block_size
from .knn_faiss import faiss_flat_knn, faiss_hnsw_knn, faiss_ivf_knn, refine_neighbor_lists
from .knn_gpu import (
    DEVICE_BYTES_PER_BLOCK_ENTRY,
    DEVICE_BYTES_PER_CANDIDATE,
    DEVICE_BYTES_PER_ROW,
    DEVICE_MAX_BLOCK,
    DEVICE_MIN_BLOCK,
    _exact_knn_device,
    _exact_knn_device_bf16,
    device_block_bytes,
    device_block_size,
    device_resident_bytes,
    float32_accumulation,
    plan_device_block,
)

# Exact search is chosen by ``auto`` up to this many multiply-adds (N²·D/2 with the symmetric product):
# 1e13 is about 50 s at the ~400 GFLOP/s float32 product measured on a 2-core Sapphire Rapids.
EXACT_MAX_MULTIPLY_ADDS = 1e13


def default_device() -> torch.device:
    """``cuda`` when available, else CPU (used only where the input does not fix the device)."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def choose_block_size(num_samples: int, device: torch.device, *, dim: int = 0, k: int = 0, product: str = "float32") -> int:
    """Rows per block: on the CPU a block×block float32 product uses a small share of free memory
    (:func:`~.knn_cpu.cpu_block_size`); on a GPU the planner :func:`plan_device_block` sizes it to
    half the free memory (:func:`~.knn_gpu.device_block_size`).
    """
    if device.type == "cuda":
        return device_block_size(num_samples, dim, k, device, product)
    return cpu_block_size(num_samples)


def _resolve_device(unit: UnitFeatures, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    if unit.device.type != "cpu":
        return unit.device
    return default_device()


@KNN_BACKENDS.register("torch")
def exact_knn(
    features: FeatureArray | UnitFeatures,
    k: int,
    *,
    device: torch.device | str | None = None,
    block_size: int | None = None,
    track_farthest: bool = False,
    product: str = "auto",
    margin: int | None = None,
) -> NeighborLists:
    """Exact self-kNN by a blocked, symmetric matrix product (O(N·k + block²) memory).

    ``device``: where the product runs; default = the input's CUDA device, else ``cuda`` when
    available, else CPU. ``track_farthest`` also returns each row's smallest similarity.
    ``product``: the arithmetic of the candidate search, ``float32`` or ``bf16``, with ``margin``
    extra candidates (default 8 on the CPU's float32, k with bf16); the lists are exact either way
    (:func:`_exact_knn_cpu`, :func:`_exact_knn_device_bf16`). ``auto`` = bf16 on a GPU and on CPUs with
    bf16 arithmetic, float32 otherwise and with ``track_farthest``.
    ``features`` are checked here unless they come as :class:`UnitFeatures` (already checked).
    """
    checked = unit_features(features)
    check_neighbor_count(checked.shape[0], k, option="k")
    if product not in ("auto", "float32", "bf16"):
        raise InvalidParameterError(f"product must be auto, float32 or bf16; received {product!r}")
    device = _resolve_device(checked, device)
    if product == "auto":  # bf16 where the hardware runs it fast: every GPU (tensor cores), CPUs with bf16 units
        product = "bf16" if (device.type != "cpu" or cpu_has_bf16()) and not track_farthest else "float32"
    if product == "bf16" and track_farthest:
        raise InvalidParameterError("track_farthest needs product='float32' (the bf16 product's minimum is approximate)")
    unit = checked.tensor.to(device)
    n = unit.shape[0]
    kept = min(n, k + (k if margin is None else margin)) if product == "bf16" else k
    if device.type != "cpu":
        block = block_size or choose_block_size(n, device, dim=unit.shape[1], k=kept, product=product)
        with float32_accumulation():
            if product == "bf16":
                indices, sims, rechecked = _exact_knn_device_bf16(unit, k, block, margin)
                return NeighborLists(indices, sims, "torch", None, product, rechecked)
            indices, sims, farthest = _exact_knn_device(unit, k, block, track_farthest)
        return NeighborLists(indices, sims, "torch", farthest)
    block = block_size or choose_block_size(n, device)
    indices, sims, farthest, rechecked = _exact_knn_cpu(unit, k, block, product=product, margin=margin,
                                                        track_farthest=track_farthest)
    return NeighborLists(indices, sims, "torch", farthest, product, rechecked)


def resolve_backend(knn: str, num_samples: int, dim: int, device: torch.device | str | None = None) -> str:
    """Name of the backend ``knn`` stands for (``auto`` decided by the cost of the exact product, and
    whether it runs on a GPU: ``device``, or any GPU when None)."""
    if knn != "auto":
        KNN_BACKENDS.get(knn)  # unknown names raise UnknownNameError listing the known ones
        return knn
    exact_cost = num_samples * num_samples * dim / 2
    on_gpu = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    if exact_cost <= EXACT_MAX_MULTIPLY_ADDS or on_gpu:
        return "torch"
    try:
        import faiss  # noqa: F401
    except ImportError:
        return "torch"
    return "faiss-ivf"


def knn_search(
    features: FeatureArray | UnitFeatures, k: int, *, knn: str = "auto", device: torch.device | str | None = None,
    **options,
) -> NeighborLists:
    """Self-kNN with the backend named by ``knn`` (see module docstring); ``options`` go to it.

    ``device``: where the exact ``torch`` backend runs (a run's own device, so ``--device cpu`` keeps
    the clustering off a GPU too); None: its default. The faiss backends place themselves.

    ``features`` are checked and L2-normalised here (unless they come as :class:`UnitFeatures`) and
    reach the backend as :class:`UnitFeatures`, so it does not check them again.
    """
    if not isinstance(features, (np.ndarray, torch.Tensor, UnitFeatures)) or len(features.shape) != 2:
        unit_features(features)  # raises the descriptive error
    name = resolve_backend(knn, int(features.shape[0]), int(features.shape[1]), device)
    if name == "torch" and device is not None:
        options["device"] = device
    return KNN_BACKENDS.get(name)(unit_features(features), k, **options)


def numba_threads() -> int:
    """Threads the numba kernels use (follows ``NUMBA_NUM_THREADS`` / the CPU count)."""
    return numba.get_num_threads()


__all__ = [
    "DEVICE_BYTES_PER_BLOCK_ENTRY",
    "DEVICE_BYTES_PER_CANDIDATE",
    "DEVICE_BYTES_PER_ROW",
    "DEVICE_MAX_BLOCK",
    "DEVICE_MIN_BLOCK",
    "EXACT_MAX_MULTIPLY_ADDS",
    "KNN_BACKENDS",
    "KnnBackend",
    "NeighborLists",
    "choose_block_size",
    "default_device",
    "device_block_bytes",
    "device_resident_bytes",
    "dot_rows",
    "exact_knn",
    "faiss_flat_knn",
    "faiss_hnsw_knn",
    "faiss_ivf_knn",
    "knn_search",
    "numba_threads",
    "plan_device_block",
    "refine_neighbor_lists",
    "resolve_backend",
]
