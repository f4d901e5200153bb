"""Peak bytes of the tensors torch ops allocate inside a block of code (CPU), for memory-plan tests.

Every op's outputs pass through the dispatch mode; a storage counts from the first tensor that
holds it until the last such tensor is collected. Storages of ``existing`` tensors (the inputs) and
their views are not counted.
"""

import weakref
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveTensorBytes(TorchDispatchMode):
    """``with LiveTensorBytes(existing=[inputs]) as mode: ...`` then ``mode.peak`` (bytes)."""

    def __init__(self, existing=()):
        super().__init__()
        self.known = {t.untyped_storage().data_ptr() for t in existing}
        self.holders = {}  # data_ptr -> [nbytes, live tensor count]
        self.live = self.peak = 0

    def _release(self, ptr):
        entry = self.holders.get(ptr)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.live -= entry[0]
            del self.holders[ptr]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            ptr = storage.data_ptr()
            if ptr in self.known or storage.nbytes() == 0:
                continue
            entry = self.holders.get(ptr)
            if entry is None:
                entry = self.holders[ptr] = [storage.nbytes(), 0]
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
            entry[1] += 1
            weakref.finalize(tensor, self._release, ptr)
        return out
