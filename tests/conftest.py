"""Tests marked ``cuda`` need a CUDA device and are skipped without one; every other test runs on the
CPU and passes with a GPU present too.

Under pytest-xdist (``-n N``) each worker takes its share of the cores for torch, numba and the
subprocesses it starts, so N workers do not each start one thread per core, and its own numba cache."""

import os
import tempfile

import pytest
import torch

_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    # numba's on-disk cache is not safe against processes compiling the same function at once (numba
    # issues 4807, 10128): a fresh checkout has no cache, so every worker would compile every kernel
    # into the same files. Each worker keeps its own cache (set before numba is imported).
    os.environ["NUMBA_CACHE_DIR"] = os.path.join(
        tempfile.gettempdir(), f"udareid-numba-cache-{os.environ.get('PYTEST_XDIST_WORKER', 'gw')}")
    import numba

    _SHARE = max(1, len(os.sched_getaffinity(0)) // _WORKERS)
    torch.set_num_threads(_SHARE)
    numba.set_num_threads(min(_SHARE, numba.config.NUMBA_NUM_THREADS))
    # torch's threads in the subprocesses a test starts; numba's stay as launched: changing
    # NUMBA_NUM_THREADS after numba started its threads makes every later compilation fail
    os.environ.setdefault("OMP_NUM_THREADS", str(_SHARE))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
