"""Tests marked ``cuda`` need a CUDA device and are skipped without one; every other test runs on the
CPU and passes with a GPU present too.

Under pytest-xdist (``-n N``) each worker takes its share of the cores for torch, numba and the
subprocesses it starts, so N workers do not each start one thread per core."""

import os

import pytest
import torch

_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    import numba

    _SHARE = max(1, len(os.sched_getaffinity(0)) // _WORKERS)
    torch.set_num_threads(_SHARE)
    numba.set_num_threads(min(_SHARE, numba.config.NUMBA_NUM_THREADS))
    os.environ.setdefault("OMP_NUM_THREADS", str(_SHARE))
    os.environ.setdefault("NUMBA_NUM_THREADS", str(_SHARE))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
