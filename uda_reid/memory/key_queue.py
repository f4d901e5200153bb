"""MoCo's queue of negative keys: a fixed-size ring of the most recent key features."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KeyQueue(nn.Module):
    """``size×dim`` L2-normalised keys (random unit vectors at the start, as MoCo); the oldest are replaced.

    A buffer, so it is saved with the model and moves with it. Under DDP every process enqueues the keys
    of the whole global batch (gathered), so all queues stay identical.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"queue size must be at least 1, got {size}")
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return len(self.keys)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` (``B×dim``) over the oldest entries, wrapping around the end."""
        keys = keys.detach().to(self.keys.dtype)
        if len(keys) > self.size:
            keys = keys[-self.size :]
        start = int(self.pointer)
        positions = (start + torch.arange(len(keys), device=self.keys.device)) % self.size
        self.keys[positions] = keys
        self.pointer.fill_((start + len(keys)) % self.size)
