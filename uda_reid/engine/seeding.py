"""One seed for Python, NumPy and torch (CPU and CUDA), so runs repeat; their states, so resumed runs do."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state(device: torch.device) -> dict[str, Any]:
    """Python, NumPy and torch generator states as tensors and plain containers (weights_only-safe).

    Of the GPUs only the process's own ``device``: reading another's state would create a context
    (and allocate memory) on a GPU that belongs to another process."""
    version, words, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, torch.tensor(words, dtype=torch.int64), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": [torch.cuda.get_rng_state(device)] if device.type == "cuda" else [],
    }


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    version, words, gauss = state["python"]
    random.setstate((version, tuple(words.tolist()), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"][0], device)  # this process's GPU only


def rank_rng_states(train_state: dict[str, Any], world_size: int) -> list[dict[str, Any]] | None:
    """The random states a checkpoint saved, one per rank, or None when another number of processes wrote it.

    The number of processes is not part of the training (``bn_groups`` counts groups of the global
    batch), so a run may resume on another number of GPUs; only the random streams (augmentation
    draws) cannot be carried over then.
    """
    states = list(train_state["rng"])
    return states if len(states) == world_size else None
