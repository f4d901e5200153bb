"""Batch samplers: which images make up each training batch.

Two kinds:

* :class:`IdentitySampler` (supervised training): every batch holds P distinct identities with K
  images each, drawn from different cameras first.
* :class:`PassSampler` (the cluster -> adapt loop): the reference methods' loaders, one pass over
  the pseudo-identities (or CAP's camera proxies) in random order cut into consecutive batches,
  with a per-method rule for what each group contributes (:data:`SAMPLERS`). SpCL's rule gives an
  un-clustered instance one slot, not K copies, which is what keeps its batches mostly clustered
  images.

With several processes (torchrun), every process draws the same global batches (same seed and
epoch) and keeps its contiguous slice, so one step of the G processes trains on exactly the batch
one process would.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from ..errors import ConfigError
from ..registry import Registry


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


# ---------------------------------------------------------------------------------------------
# Pass samplers: what the published cluster -> adapt methods feed their losses.
#
# The reference implementations build one long index list per pass over the training "groups"
# (identities, or CAP's camera proxies) in random order, and a DataLoader with ``drop_last`` cuts it
# into consecutive batches; when a pass runs out, the next one starts. How many images a group gives
# is the method's rule, so a batch holds a varying number of groups. Samples labelled -1 are never
# drawn.

GroupDraw = Callable[[np.ndarray, np.ndarray, int, np.random.Generator], np.ndarray]
SAMPLERS: Registry[GroupDraw] = Registry("batch sampler", "adapt.sampler")


@SAMPLERS.register("multi_gallery")
def draw_anchor_and_other_cameras(members: np.ndarray, cameras: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """SpCL's ``RandomMultipleGallerySampler`` (also cluster-contrast's and PPLR's).

    A random anchor, then K−1 images of the same identity from cameras other than the anchor's
    (without replacement when there are at least K of them, as the reference code tests, else with),
    or, when the identity has no other camera, from its other images by the same rule. An identity
    with a single image gives only that image: an un-clustered instance takes one slot of a batch.
    """
    anchor = int(rng.integers(len(members)))
    if len(members) == 1:
        return members[:1]
    pool = np.flatnonzero(cameras != cameras[anchor])
    if len(pool) == 0:
        pool = np.delete(np.arange(len(members)), anchor)
    others = rng.choice(pool, size=k - 1, replace=len(pool) < k)
    return members[np.concatenate([[anchor], others])]


@SAMPLERS.register("random_identity")
def draw_k_instances(members: np.ndarray, cameras: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """open-reid's ``RandomIdentitySampler`` (also in SpCL's code, unused there): K images of the
    identity, without replacement when it has at least K, else with replacement, so an
    un-clustered instance fills K slots. For comparison with the reference rules."""
    return rng.choice(members, size=k, replace=len(members) < k)


@SAMPLERS.register("proxy_balanced")
def draw_k_of_proxy(members: np.ndarray, cameras: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """CAP's proxy-balanced sampling (``ClassUniformlySampler`` over (pseudo-label, camera) groups):
    K images of the proxy, without replacement; a proxy with fewer than K images takes K at random
    from its list repeated K times, as the reference does."""
    if len(members) >= k:
        return rng.choice(members, size=k, replace=False)
    return rng.permutation(np.tile(members, k))[:k]


#: Samplers whose groups are (pseudo-label, camera) pairs instead of pseudo-labels.
GROUPS_BY_CAMERA = {"proxy_balanced"}


@SAMPLERS.register("every_image")
def draw_the_image(members: np.ndarray, cameras: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Pre-training: every image is its own group, drawn once per pass, so a pass is a permutation of
    the images cut into batches (MoCo's loader)."""
    return members


class PassSampler(Sampler[int]):
    """Batches cut from passes over groups in random order (the reference methods' loaders).

    ``labels``: training label per sample (−1 = not drawn); ``cameras``: camera per sample (None:
    one camera). ``rule``: a name in :data:`SAMPLERS`. Each pass visits every group once in random
    order and appends what the rule draws from it; the pass is cut into consecutive batches of
    ``batch_size`` images (a short tail is dropped, as ``drop_last`` does) and the next pass starts
    until ``num_batches`` batches were given. A pass shorter than one batch (the reference loaders
    would stop there) is joined with the next ones. Draws depend only on (seed, epoch): :meth:`set_epoch`.

    With ``num_replicas`` processes, process ``rank`` yields the images ``rank·B/G .. (rank+1)·B/G``
    of every global batch, so G processes train on exactly the batches of one.
    """

    def __init__(
        self,
        labels: Sequence[int],
        *,
        rule: str,
        batch_size: int,
        num_instances: int,
        num_batches: int,
        cameras: Sequence[int] | None = None,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        self.draw = SAMPLERS.get(rule)
        if num_instances < 1 or batch_size < 1:
            raise ConfigError(
                f"data.batch_size ({batch_size}) and data.num_instances ({num_instances}) must be positive"
            )
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"PassSampler: need 0 <= rank < num_replicas, got rank {rank} of {num_replicas}")
        if batch_size % num_replicas:
            raise ConfigError(
                f"data.batch_size ({batch_size}) must be a multiple of the number of processes ({num_replicas}), "
                f"so that every process gets an equal share of each batch"
            )
        labels = np.asarray(labels, dtype=np.int64)
        cameras = np.zeros(len(labels), dtype=np.int64) if cameras is None else np.asarray(cameras, dtype=np.int64)
        if cameras.shape != labels.shape:
            raise ValueError(f"PassSampler: got {len(cameras)} cameras for {len(labels)} labels")
        self.rule = rule
        self.batch_size = batch_size
        self.num_instances = num_instances
        self.num_batches = num_batches
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.cameras = cameras
        drawn = np.flatnonzero(labels >= 0)
        if len(drawn) == 0:
            raise ConfigError("the batch sampler got no labelled sample (all labels are -1)")
        keys = labels[drawn] * (int(cameras.max()) + 1) + cameras[drawn] if rule in GROUPS_BY_CAMERA else labels[drawn]
        _, group_of = np.unique(keys, return_inverse=True)
        order = np.argsort(group_of, kind="stable")
        bounds = np.flatnonzero(np.diff(group_of[order])) + 1
        self.groups: list[np.ndarray] = np.split(drawn[order], bounds)

    def set_epoch(self, epoch: int) -> None:
        """Different draws each epoch, reproducible from (seed, epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        """Indices this process yields: its share of every batch."""
        return self.num_batches * (self.batch_size // self.num_replicas)

    def pass_indices(self, rng: np.random.Generator) -> np.ndarray:
        """One pass: every group once, in random order, as the rule draws it."""
        draws = [self.draw(self.groups[g], self.cameras[self.groups[g]], self.num_instances, rng)
                 for g in rng.permutation(len(self.groups))]
        return np.concatenate(draws)

    def global_batches(self) -> Iterator[np.ndarray]:
        """The ``num_batches`` global batches of this epoch (every process draws the same)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        given = 0
        while given < self.num_batches:
            indices = self.pass_indices(rng)
            while len(indices) < self.batch_size:  # a pass shorter than a batch (one big cluster): join passes
                indices = np.concatenate([indices, self.pass_indices(rng)])
            full = len(indices) // self.batch_size
            for batch in indices[: full * self.batch_size].reshape(full, self.batch_size)[: self.num_batches - given]:
                yield batch
            given += min(full, self.num_batches - given)

    def __iter__(self) -> Iterator[int]:
        share = self.batch_size // self.num_replicas
        mine = slice(self.rank * share, (self.rank + 1) * share)
        for batch in self.global_batches():
            yield from (int(i) for i in batch[mine])



#: The supervised rule: every batch P distinct identities × K images (:class:`IdentitySampler`).
DISTINCT_IDENTITIES = "distinct_identities"


def sampler_rules() -> list[str]:
    """Every name ``adapt.sampler`` (or a method's ``sampler``) may take."""
    return [DISTINCT_IDENTITIES, *SAMPLERS.names()]


def check_sampler_rule(rule: str, key: str = "adapt.sampler") -> str:
    """``rule`` itself, or a ConfigError naming ``key`` and the valid rules."""
    if rule != DISTINCT_IDENTITIES and rule not in SAMPLERS.names():
        raise ConfigError(f"{key}: unknown sampler {rule!r}; choose one of: auto, {', '.join(sampler_rules())}")
    return rule


def build_batch_sampler(
    rule: str,
    labels: Sequence[int],
    *,
    cameras: Sequence[int] | None,
    batch_size: int,
    num_instances: int,
    num_batches: int,
    seed: int,
    epoch: int,
    num_replicas: int = 1,
    rank: int = 0,
) -> Sampler[int]:
    """This process's share of an epoch's ``num_batches`` global batches, drawn by ``rule``."""
    if rule == DISTINCT_IDENTITIES:
        sampler: IdentitySampler | PassSampler = IdentitySampler(
            labels, cameras=cameras, batch_size=batch_size, num_instances=num_instances, num_batches=num_batches,
            seed=seed, num_replicas=num_replicas, rank=rank)
    else:
        sampler = PassSampler(labels, rule=rule, cameras=cameras, batch_size=batch_size, num_instances=num_instances,
                              num_batches=num_batches, seed=seed, num_replicas=num_replicas, rank=rank)
    sampler.set_epoch(epoch)
    return sampler


def batches_per_pass(labels: Sequence[int], batch_size: int, num_instances: int) -> int:
    """Batches that one pass over the labelled identities takes at K images each: what an epoch of
    ``iters_per_epoch: 0`` trains (at least one)."""
    labels = np.asarray(labels)
    identities = len(np.unique(labels[labels >= 0]))
    return max(1, identities * num_instances // batch_size)
