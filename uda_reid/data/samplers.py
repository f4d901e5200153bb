"""P×K identity sampling: every batch holds P identities with K images each.

Batch-hard triplet and contrastive losses need positives in the batch; drawing the K instances
from different cameras when possible (as SpCL does) makes those positives informative.

With several processes (torchrun), every process draws the same global batches (same seed and
epoch) and keeps its contiguous slice: process ``r`` of ``G`` gets identities ``r·P/G .. (r+1)·P/G``
of each batch, so one step of the G processes trains on exactly the batch one process would.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from ..errors import ConfigError


class IdentitySampler(Sampler[int]):
    """Yields dataset indices so that consecutive runs of P·K indices form P×K batches.

    ``labels``: identity (or pseudo-label) per sample; samples with label < 0 are never drawn.
    ``cameras``: optional camera per sample; when given, the K instances of an identity are taken
    from distinct cameras first. An identity with fewer than K images is sampled with replacement.
    ``num_batches``: batches per pass (one epoch of iterations); each batch has distinct identities.
    ``num_replicas`` / ``rank``: with several processes, this process's slice of each global batch
    (``batch_size / num_replicas`` indices of whole identities); load it with that batch size.
    """

    def __init__(
        self,
        labels: Sequence[int],
        *,
        batch_size: int,
        num_instances: int,
        num_batches: int,
        cameras: Sequence[int] | None = None,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if num_instances < 1 or batch_size % num_instances != 0:
            raise ConfigError(
                f"data.batch_size ({batch_size}) must be a positive multiple of "
                f"data.num_instances ({num_instances})"
            )
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"IdentitySampler: need 0 <= rank < num_replicas, got rank {rank} of {num_replicas}")
        if batch_size % (num_instances * num_replicas) != 0:
            raise ConfigError(
                f"data.batch_size ({batch_size}) must be a multiple of data.num_instances ({num_instances}) "
                f"× the number of processes ({num_replicas}) = {num_instances * num_replicas}, so that every "
                f"process gets whole identities; change data.batch_size or the number of processes"
            )
        self.labels = np.asarray(labels)
        self.cameras = None if cameras is None else np.asarray(cameras)
        self.num_instances = num_instances
        self.ids_per_batch = batch_size // num_instances
        self.num_batches = num_batches
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.ids_per_replica = self.ids_per_batch // num_replicas
        self.epoch = 0
        groups: dict[int, list[int]] = defaultdict(list)
        for index, label in enumerate(self.labels.tolist()):
            if label >= 0:
                groups[label].append(index)
        self.groups = {label: np.asarray(indices) for label, indices in groups.items()}
        self.identities = np.asarray(sorted(self.groups))
        if len(self.identities) == 0:
            raise ConfigError("the identity sampler got no labelled sample (all labels are -1)")

    def set_epoch(self, epoch: int) -> None:
        """Different draws each epoch, reproducible from (seed, epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        """Indices this process yields per pass: its slice of every batch."""
        return self.num_batches * self.ids_per_replica * self.num_instances

    def _instances(self, identity: int, rng: np.random.Generator) -> np.ndarray:
        members = self.groups[identity]
        k = self.num_instances
        if len(members) < k:
            return rng.choice(members, size=k, replace=True)
        shuffled = rng.permutation(members)
        if self.cameras is None:
            return shuffled[:k]
        # One image per camera first (in random order), then fill from the rest.
        cams = self.cameras[shuffled]
        _, first = np.unique(cams, return_index=True)
        first = rng.permutation(first)
        rest = np.setdiff1d(np.arange(len(shuffled)), first, assume_unique=True)
        order = np.concatenate([first, rng.permutation(rest)])
        return shuffled[order[:k]]

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        replace = len(self.identities) < self.ids_per_batch
        mine = slice(self.rank * self.ids_per_replica, (self.rank + 1) * self.ids_per_replica)
        for _ in range(self.num_batches):
            chosen = rng.choice(self.identities, size=self.ids_per_batch, replace=replace)
            # Every identity's instances are drawn (the stream stays the global one); only this
            # process's slice is yielded.
            batch = [self._instances(int(identity), rng) for identity in chosen]
            for instances in batch[mine]:
                yield from (int(i) for i in instances)
