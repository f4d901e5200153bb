"""Every process touches only its own GPU: set_device on every path into a run, faiss on that GPU
only, random states of that GPU only. Driven on the CPU with torch.cuda and faiss stood in for."""

import types

import numpy as np
import pytest
import torch
import torch.distributed as dist

from uda_reid import distributed
from uda_reid.clustering import knn as knn_module
from uda_reid.engine import seeding


@pytest.fixture
def two_gpus(monkeypatch):
    """torch.cuda says there are two GPUs; returns the list of devices set_device was called with."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(torch.device(device)))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: calls[-1].index if calls else 0)
    return calls


def test_a_process_group_made_by_the_caller_still_binds_the_rank_to_its_gpu(two_gpus, monkeypatch):
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_backend", lambda: "nccl")
    monkeypatch.setenv("LOCAL_RANK", "1")
    context = distributed.init_distributed("auto")
    assert context.device == torch.device("cuda", 1)
    assert two_gpus == [torch.device("cuda", 1)]


def test_torchrun_binds_the_gpu_before_joining_the_group(two_gpus, monkeypatch):
    joined = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: joined.append((kwargs["backend"], list(two_gpus))))
    for name, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(name, value)
    context = distributed.init_distributed("cuda")
    assert context.device == torch.device("cuda", 1)
    assert joined == [("nccl", [torch.device("cuda", 1)])]  # NCCL's communicator then lives on GPU 1


def test_a_single_process_asked_for_the_second_gpu_makes_it_current(two_gpus, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    assert distributed.init_distributed("cuda:1").device == torch.device("cuda", 1)
    assert two_gpus == [torch.device("cuda", 1)]


def test_faiss_flat_searches_on_the_process_gpu_only(two_gpus, monkeypatch):
    import faiss as real_faiss

    placed = []

    def to_gpu(resources, device, index):
        placed.append(device)
        return index  # the CPU index stands in for its GPU copy

    def to_all_gpus(*args, **kwargs):
        raise AssertionError("faiss placed an index on every GPU of the node")

    fake = types.SimpleNamespace(IndexFlatIP=real_faiss.IndexFlatIP, get_num_gpus=lambda: 2,
                                 StandardGpuResources=object, index_cpu_to_gpu=to_gpu,
                                 index_cpu_to_all_gpus=to_all_gpus)
    monkeypatch.setitem(__import__("sys").modules, "faiss", fake)
    torch.cuda.set_device(1)  # what init_distributed did for rank 1
    features = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    result = knn_module.faiss_flat_knn(features, 5)
    assert placed == [1]
    assert result.indices.shape == (50, 5) and (result.indices[:, 0] == np.arange(50)).all()


def test_a_checkpoint_holds_the_random_state_of_the_process_gpu_only(monkeypatch):
    read = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: read.append(device) or torch.zeros(8, dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("read the state of every GPU"))
    state = seeding.rng_state(torch.device("cuda", 1))
    assert read == [torch.device("cuda", 1)] and len(state["cuda"]) == 1
    assert seeding.rng_state(torch.device("cpu"))["cuda"] == []


def test_restoring_sets_only_the_process_gpu(monkeypatch):
    written = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: written.append((int(state[0]), device)))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: pytest.fail("set the state of every GPU"))
    state = seeding.rng_state(torch.device("cpu"))
    gpu1 = torch.device("cuda", 1)
    seeding.set_rng_state({**state, "cuda": [torch.full((8,), 7, dtype=torch.uint8)]}, gpu1)
    assert written == [(7, gpu1)]
