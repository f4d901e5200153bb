"""Device selection: CUDA when available, else CPU, unless the user names one."""

from __future__ import annotations

import os

import torch

from .errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device: unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine; use auto or cpu")
    return device


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a cluster job's share)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def processes_per_machine() -> int:
    """Training processes sharing this machine's cores: torchrun's ``LOCAL_WORLD_SIZE``, else 1."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def loader_workers(requested: int) -> int:
    """``data.workers``, at most this process's share of the cores: more workers than cores only
    contend for them (the paper recipes ask for 4; a 2-core laptop gets 2; 8 processes under torchrun
    on 16 cores get 2 each, not 4 each on 16 cores)."""
    return min(requested, max(1, available_cores() // processes_per_machine()))


def loader_options(requested_workers: int, device: torch.device) -> dict:
    """DataLoader settings for a process feeding ``device``: its share of the workers; with a GPU,
    pinned batches (an asynchronous copy) and 4 batches prefetched per worker (uint8 batches are
    small). Workers are not persistent: an epoch's dataset holds that epoch's pseudo-labels, and every
    epoch's loader seeds its workers from the main process's random state, which checkpoints keep,
    so a resumed run draws the same augmentations."""
    workers = loader_workers(requested_workers)
    options: dict = {"num_workers": workers, "pin_memory": device.type == "cuda"}
    if workers > 0 and device.type == "cuda":
        options["prefetch_factor"] = 4
    return options
