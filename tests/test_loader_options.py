"""The DataLoader a process builds: its share of the cores, pinned and prefetched only for a GPU."""

import pytest
import torch

from uda_reid import device as devices
from uda_reid.device import loader_options, loader_workers


@pytest.mark.parametrize(("cores", "processes", "requested", "expected"), [
    (2, None, 4, 2),      # a laptop: not more workers than cores
    (16, None, 4, 4),     # the recipe's 4 where there are more cores
    (16, "8", 4, 2),      # 8 processes under torchrun share the 16 cores
    (16, "4", 8, 4),
    (4, "8", 4, 1),       # more processes than cores: still one worker each
    (16, "8", 0, 0),      # 0: load in the main process, as asked
])
def test_workers_are_the_recipes_number_within_this_processs_share_of_the_cores(monkeypatch, cores, processes, requested,
                                                                                  expected):
    monkeypatch.setattr(devices, "available_cores", lambda: cores)
    if processes is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", processes)
    assert loader_workers(requested) == expected


def test_a_gpu_gets_pinned_prefetched_batches_and_the_cpu_plain_ones(monkeypatch):
    monkeypatch.setattr(devices, "available_cores", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert loader_options(4, torch.device("cuda")) == {"num_workers": 4, "pin_memory": True, "prefetch_factor": 4}
    assert loader_options(4, torch.device("cpu")) == {"num_workers": 4, "pin_memory": False}
    assert loader_options(0, torch.device("cuda")) == {"num_workers": 0, "pin_memory": True}  # no workers, no prefetch
