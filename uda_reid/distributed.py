"""Several processes, one run: the torchrun / DistributedDataParallel plumbing of the engine.

``torchrun --nproc_per_node=G -m uda_reid.cli adapt ...`` starts G processes that all run the same
command. :func:`init_distributed` reads torchrun's environment (``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``; ``MASTER_ADDR``/``MASTER_PORT``) and joins the process group: NCCL when the
processes use GPUs (process ``LOCAL_RANK`` takes ``cuda:LOCAL_RANK``), gloo on CPUs. Without
``WORLD_SIZE`` (a normal run) the context is trivial and every helper below is the identity, so
single-process runs do exactly what they did before.

How G processes make one run (the engine follows these rules):

* every rank draws the same global P×K batch and trains on its contiguous slice of it
  (``IdentitySampler(num_replicas=G, rank=r)``); ``bn_groups`` counts BatchNorm groups of the
  global batch, each rank computing its share of them (:func:`bn_groups_per_process`), so a run of
  G ranks computes what one process computes with the same settings (up to float rounding);
* losses that decompose over samples (means of per-sample terms) are computed on the slice and
  DDP averages the gradients; losses that couple the samples of a batch (batch-hard triplet, GDS,
  camera proxies) see the whole batch through :meth:`DistributedContext.gather_batch`, whose
  backward sums the gradients of all ranks, so DDP's average again gives the global gradient;
* per-sample state (memories, proxies, statistics) is updated on every rank from the gathered
  batch in global order, so it stays identical, and the clustering runs once, on rank 0;
* only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import os
import pickle
import random
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .errors import ConfigError, UdaReidError
from .device import resolve_device

if TYPE_CHECKING:
    from .config import RunConfig

#: Minutes a collective may wait for the other ranks (rank 0 clusters alone while they wait).
TIMEOUT_ENV = "UDAREID_DIST_TIMEOUT_MINUTES"
DEFAULT_TIMEOUT_MINUTES = 180

T = TypeVar("T")


class RankMismatchError(UdaReidError):
    """State that must be identical on every rank (pseudo-labels, clustered features) is not."""


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a run of ``world_size`` processes; collectives over all of them.

    ``backend`` is ``""`` for a single process (no process group): every collective then returns
    its input. Tensors handed to collectives may live on the CPU with NCCL too: they are moved to
    ``device`` for the exchange and returned where they came from.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str = ""

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that clusters, logs and writes files."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    # ------------------------------------------------------------------ splitting work
    def shard(self, count: int) -> slice:
        """This rank's contiguous part of ``range(count)``; parts differ in size by at most one."""
        return slice(self.rank * count // self.world_size, (self.rank + 1) * count // self.world_size)

    # ------------------------------------------------------------------ collectives
    def barrier(self) -> None:
        if self.is_distributed:
            if self.backend == "nccl":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every rank (pickled; any picklable object)."""
        if not self.is_distributed:
            return obj
        holder = [obj]
        dist.broadcast_object_list(holder, src=src, device=self._comm_device)
        return holder[0]

    def on_main(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``function(*args, **kwargs)`` run by rank 0 alone; every rank returns its result.

        For work done once (the clustering stage, the ranking of an evaluation). When it raises,
        every rank raises the error, instead of the others waiting for a result that never comes.
        """
        if not self.is_distributed:
            return function(*args, **kwargs)
        outcome: tuple[bool, Any] | None = None
        if self.is_main:
            try:
                outcome = (True, function(*args, **kwargs))
            except Exception as error:  # noqa: BLE001 - handed to every rank, then raised
                outcome = (False, error if _picklable(error) else RuntimeError(f"{type(error).__name__}: {error}"))
        succeeded, value = self.broadcast_object(outcome)
        if not succeeded:
            raise value
        return value

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order."""
        if not self.is_distributed:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    @torch.no_grad()
    def gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """The rows of every rank's ``tensor`` concatenated in rank order (``n_r×...`` -> ``Σn_r×...``).

        Row counts may differ (sharded feature extraction), including zero; the trailing shape is
        taken from the ranks that have rows. No gradient. The result is on ``tensor``'s device.
        """
        if not self.is_distributed:
            return tensor
        shapes = self.all_gather_object(tuple(tensor.shape))
        counts = [shape[0] for shape in shapes]
        with_rows = [shape for shape in shapes if shape[0] > 0]
        if not with_rows:
            return tensor
        trailing = tuple(with_rows[0][1:])
        if any(tuple(shape[1:]) != trailing for shape in with_rows):
            raise ValueError(f"gather_rows: ranks hold rows of different shapes {shapes}")
        padded = torch.zeros((max(counts), *trailing), dtype=tensor.dtype, device=self._comm_device)
        if tensor.shape[0]:
            padded[: tensor.shape[0]] = tensor.to(self._comm_device)
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        return torch.cat([part[:count] for part, count in zip(parts, counts)]).to(tensor.device)

    def gather_batch(self, tensor: torch.Tensor) -> torch.Tensor:
        """The global batch: every rank's slice (equal sizes) concatenated in rank order.

        Differentiable when ``tensor`` requires grad: the backward sums the gradients every rank's
        loss sends to this rank's slice. A loss computed on the gathered batch is then the same
        number on every rank, and DDP's gradient average over ranks recovers its exact gradient.
        """
        if not self.is_distributed:
            return tensor
        if tensor.requires_grad:
            return _GatherWithGradient.apply(tensor, self)
        parts = [torch.empty_like(tensor, device=self._comm_device) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous().to(self._comm_device))
        return torch.cat(parts).to(tensor.device)

    @torch.no_grad()
    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """Element-wise mean of ``tensor`` over ranks (a new tensor; the input is not changed)."""
        if not self.is_distributed:
            return tensor.detach().clone()
        total = tensor.detach().to(self._comm_device, copy=True)
        dist.all_reduce(total)
        return (total / self.world_size).to(tensor.device)

    @torch.no_grad()
    def average_gradients(self, parameters: Sequence[nn.Parameter]) -> None:
        """Replace each parameter's ``.grad`` by its mean over ranks (parameters DDP does not own).

        The method's per-epoch heads are re-created every epoch, outside the DDP module. A rank
        without a gradient for a parameter counts as a zero gradient; the parameter gets no
        gradient only when no rank has one, so the optimiser step stays the same on every rank.
        """
        if not self.is_distributed or not parameters:
            return
        flags = torch.tensor([p.grad is not None for p in parameters], dtype=torch.float32)
        flat = torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1).float().to(self._comm_device)
             for p in parameters]
            + [flags.to(self._comm_device)]
        )
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for index, parameter in enumerate(parameters):
            size = parameter.numel()
            values = flat[offset : offset + size].view_as(parameter).to(device=parameter.device, dtype=parameter.dtype).clone()
            offset += size
            parameter.grad = values if float(flat[-len(parameters) + index]) > 0 else None

    @torch.no_grad()
    def sync_buffers_from_main(self, module: nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) into ``module`` on every rank.

        With per-rank BatchNorm each rank's running statistics follow its own slice; a single
        process with ``bn_groups`` keeps those of group 0, i.e. rank 0's. Called before anything
        reads them (evaluation, feature extraction, checkpoints).
        """
        if not self.is_distributed:
            return
        for buffer in module.buffers():
            staged = buffer.to(self._comm_device)
            dist.broadcast(staged, src=0)
            if staged is not buffer:
                buffer.copy_(staged)

    def check_identical(self, what: str, *values: np.ndarray | torch.Tensor,
                        cause: str = "This is a bug in a method's on_clusters (it must be deterministic): please report it") -> str:
        """Checksum of ``values`` (arrays or tensors), compared across ranks; returns it.

        The checksum is of the bytes: float sums of equal tensors may differ between processes
        (vectorised reductions depend on memory alignment), bytes do not. Raises :class:`RankMismatchError` on every rank when any rank's checksum differs, so no
        rank goes on alone (which would hang the next collective instead of failing).
        """
        digest = hashlib.blake2b(digest_size=8)
        for value in values:
            array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            digest.update(str((array.dtype.str, array.shape)).encode())
            digest.update(memoryview(np.ascontiguousarray(array)).cast("B"))  # the bytes, not copied
        mine = digest.hexdigest()
        every = self.all_gather_object(mine)
        if len(set(every)) > 1:
            listed = ", ".join(f"rank {rank}: {value}" for rank, value in enumerate(every))
            raise RankMismatchError(
                f"{what} differ between the processes ({listed}); every rank must hold the same values. {cause}"
            )
        return mine

    # ------------------------------------------------------------------ model and randomness
    def wrap_model(self, model: nn.Module, *, sync_bn: bool = False, sync_bn_key: str = "adapt.sync_bn") -> nn.Module:
        """``model`` ready for training on this rank: DDP-wrapped when there are several ranks.

        ``sync_bn`` converts every BatchNorm to ``SyncBatchNorm`` first (statistics over the whole
        global batch; NCCL/GPUs only), on a copy. Without it each rank's BatchNorm normalises its
        own slice. Buffers are not broadcast on every forward; call :meth:`sync_buffers_from_main`
        before reading them. The input model is not modified when it is converted.
        """
        if not self.is_distributed:
            return model
        if sync_bn:
            if self.device.type != "cuda":
                raise ConfigError(
                    f"{sync_bn_key}: SyncBatchNorm needs GPU processes (NCCL); these processes run on "
                    f"{self.device.type}. Set {sync_bn_key}=false (each process then normalises its own slice)"
                )
            model = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model))
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        # Two forward passes before one backward (SpCL: source, then target with its own BN) need
        # no static_graph: each parameter's gradient hook still fires once per backward.
        return DistributedDataParallel(model, device_ids=device_ids, **_NO_FORWARD_BUFFER_SYNC)

    def seed_rank_streams(self, seed: int) -> None:
        """Give each rank its own Python / NumPy / torch random streams (augmentation, workers).

        Identical streams would flip and erase the same positions of every rank's slice. A
        single process keeps its streams as they are.
        """
        if not self.is_distributed:
            return
        rank_seed = int(np.random.SeedSequence([seed, self.rank]).generate_state(1)[0])
        random.seed(rank_seed)
        np.random.seed(rank_seed)
        torch.manual_seed(rank_seed)

    @property
    def _comm_device(self) -> torch.device:
        """Where tensors must be for this backend's collectives."""
        return self.device if self.backend == "nccl" else torch.device("cpu")


class _GatherWithGradient(torch.autograd.Function):
    """All-gather of equal-size slices; backward: sum over ranks of the gradient of this rank's rows."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
        ctx.context = context
        ctx.rows = tensor.shape[0]
        ctx.source_device = tensor.device
        staged = tensor.detach().contiguous().to(context._comm_device)
        parts = [torch.empty_like(staged) for _ in range(context.world_size)]
        dist.all_gather(parts, staged)
        return torch.cat(parts).to(tensor.device)

    @staticmethod
    def backward(ctx, gradient: torch.Tensor):
        context: DistributedContext = ctx.context
        total = gradient.contiguous().to(context._comm_device, copy=True)
        dist.all_reduce(total)
        start = context.rank * ctx.rows
        return total[start : start + ctx.rows].to(ctx.source_device), None


def bn_groups_per_process(bn_groups: int, world_size: int, *, sync_bn: bool = False, section: str = "adapt") -> int:
    """Groups each process splits its slice into, so that BatchNorm sees ``bn_groups`` groups of the global batch.

    ``{section}.bn_groups`` describes the training, not the hardware: statistics over that many
    contiguous groups of the global batch (4 = the published 4-GPU DataParallel runs), so a recipe
    trains the same on 1, 2 or 4 processes. Each process normalises its own slice, so the groups
    must be a multiple of the processes; ``sync_bn`` (SyncBatchNorm, GPUs) gives one group, the
    whole batch. Raises ConfigError, with both ways out, for what the processes cannot compute.
    """
    key = f"{section}.bn_groups"
    if sync_bn:
        if bn_groups != 1:
            raise ConfigError(
                f"{section}.sync_bn (statistics over the whole batch of all processes) and {key} ({bn_groups}, "
                f"statistics over groups of it) contradict each other; set one of them"
            )
        return 1
    if isinstance(bn_groups, bool) or not isinstance(bn_groups, int) or bn_groups < 1:
        raise ConfigError(f"{key} must be a positive integer (1 = plain BatchNorm), got {bn_groups!r}")
    if bn_groups % world_size:
        raise ConfigError(
            f"{key} is {bn_groups}: BatchNorm statistics over {bn_groups} group(s) of the global batch, but each of "
            f"the {world_size} processes normalises its own slice, so the groups must be a multiple of "
            f"{world_size}. Set --set {key}={world_size} (one group per process, as DataParallel replicas had), "
            f"another multiple of {world_size}, or --set {section}.sync_bn=true (GPUs: statistics over the "
            f"whole batch, as {key}=1 on one process)"
        )
    return bn_groups // world_size


def check_batch_split(config: RunConfig, world_size: int, section: str = "adapt", *, batch_size: int | None = None,
                      batch_key: str = "data.batch_size") -> None:
    """Refuse batch and BatchNorm settings the processes cannot split (equal slices of each batch,
    BatchNorm groups that are equal parts of the batch and a multiple of the processes).
    ``section``: where the BatchNorm settings are (``adapt``, ``train`` or ``pretrain``); ``batch_size``:
    the global batch (default ``data.batch_size``), named ``batch_key`` in messages."""
    data, stage = config.data, getattr(config, section)
    batch = data.batch_size if batch_size is None else batch_size
    if data.num_instances < 1 or batch < 1 or batch % world_size:
        raise ConfigError(
            f"{batch_key} ({batch}) must be a positive multiple of the number of processes "
            f"({world_size}) and data.num_instances ({data.num_instances}) positive, so that every process "
            f"gets an equal share of each batch; change {batch_key} or the number of processes"
        )
    bn_groups_per_process(stage.bn_groups, world_size, sync_bn=getattr(stage, "sync_bn", False), section=section)
    if batch % stage.bn_groups:
        raise ConfigError(
            f"{section}.bn_groups ({stage.bn_groups}) must divide {batch_key} ({batch}): "
            f"BatchNorm groups are equal parts of the batch"
        )
    sync_bn = getattr(stage, "sync_bn", False)
    if (batch if sync_bn else batch // max(stage.bn_groups, world_size)) < 2:
        raise ConfigError(
            f"{batch_key} ({batch}) gives BatchNorm fewer than 2 images per "
            + (f"{section}.bn_groups group" if stage.bn_groups > 1 else "process")
            + f": training BatchNorm needs at least 2 to compute its statistics; raise {batch_key}"
        )



def _picklable(obj: Any) -> bool:
    try:
        pickle.dumps(obj)
    except Exception:  # noqa: BLE001 - any failure means "send a description instead"
        return False
    return True


def _no_forward_buffer_sync() -> dict[str, bool]:
    """DDP's keyword for "do not broadcast buffers before every forward" (renamed in recent torch)."""
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


_NO_FORWARD_BUFFER_SYNC = _no_forward_buffer_sync()


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (attributes, state dicts, evaluation), else ``model`` itself."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def _timeout() -> timedelta:
    value = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_MINUTES))
    try:
        minutes = float(value)
    except ValueError:
        raise ConfigError(f"{TIMEOUT_ENV}: expected a number of minutes, got {value!r}") from None
    if minutes <= 0:
        raise ConfigError(f"{TIMEOUT_ENV}: expected a positive number of minutes, got {value!r}")
    return timedelta(minutes=minutes)


def _env_int(name: str) -> int:
    value = os.environ.get(name)
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(
            f"environment variable {name}: expected an integer (torchrun sets it), got {value!r}"
        ) from None


def _process_device(device_option: str, local_rank: int, world_size: int) -> torch.device:
    """``cuda:LOCAL_RANK`` when the run uses GPUs, else the CPU."""
    device = resolve_device(device_option)
    if device.type != "cuda":
        return device
    if world_size > 1 and device.index is not None:
        raise ConfigError(
            f"--device {device_option}: under torchrun each process takes the GPU of its LOCAL_RANK; "
            f"use --device cuda (or auto)"
        )
    if world_size == 1:
        return device
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(
            f"LOCAL_RANK {local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
            f"start at most that many processes per node (--nproc_per_node)"
        )
    return torch.device("cuda", local_rank)


def _bound(device: torch.device) -> torch.device:
    """Make ``device`` this process's current GPU, so that whatever allocates on plain ``cuda``
    (NCCL, faiss, libraries) lands on it and not on GPU 0 of the node."""
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    return device


def init_distributed(device_option: str = "auto") -> DistributedContext:
    """The context of this process: from torchrun's environment, or a trivial one.

    Joins (or, when the caller already did, reuses) the default process group: NCCL on GPUs,
    gloo on CPUs. ``device_option`` is the run's ``device`` setting (auto, cpu, cuda).
    """
    if dist.is_available() and dist.is_initialized():
        world_size, rank = dist.get_world_size(), dist.get_rank()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        device = _bound(_process_device(device_option, local_rank, world_size))
        return DistributedContext(rank, world_size, local_rank, device, dist.get_backend())
    world_size = _env_int("WORLD_SIZE") if "WORLD_SIZE" in os.environ else 1
    if world_size <= 1:
        return DistributedContext(device=_bound(resolve_device(device_option)))
    rank, local_rank = _env_int("RANK"), _env_int("LOCAL_RANK")
    device = _bound(_process_device(device_option, local_rank, world_size))
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=_timeout())
    return DistributedContext(rank, world_size, local_rank, device, backend)


@contextlib.contextmanager
def distributed_session(device_option: str = "auto") -> Iterator[DistributedContext]:
    """``with distributed_session(config.device) as ctx:`` — the process group lives for the block.

    The group is destroyed at the end only when this block created it.
    """
    created = not (dist.is_available() and dist.is_initialized())
    context = init_distributed(device_option)
    try:
        yield context
    finally:
        if created and context.is_distributed and dist.is_initialized():
            dist.destroy_process_group()
