"""P×K identity sampling: every batch holds P identities with K images each.

Batch-hard triplet and contrastive losses need positives in the batch; drawing the K instances
from different cameras when possible (as SpCL does) makes those positives informative.
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
    ) -> None:
        if num_instances < 1 or batch_size % num_instances != 0:
            raise ConfigError(
                f"data.batch_size ({batch_size}) must be a positive multiple of "
                f"data.num_instances ({num_instances})"
            )
        self.labels = np.asarray(labels)
        self.cameras = None if cameras is None else np.asarray(cameras)
        self.num_instances = num_instances
        self.ids_per_batch = batch_size // num_instances
        self.num_batches = num_batches
        self.seed = seed
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
        return self.num_batches * self.ids_per_batch * self.num_instances

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
        for _ in range(self.num_batches):
            chosen = rng.choice(self.identities, size=self.ids_per_batch, replace=replace)
            for identity in chosen:
                yield from (int(i) for i in self._instances(int(identity), rng))
