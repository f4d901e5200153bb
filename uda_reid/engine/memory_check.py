"""Will a run fit in memory? Estimated from its settings and data before the first batch, and refused
with one line when it cannot, instead of growing until the kernel's out-of-memory killer ends it
(and perhaps other jobs on the machine) without a word.

Each phase of a run holds the model's state (weights, gradients, optimiser state, momentum copies) and
the method's feature memory, plus its own working set:

- a training step: what autograd keeps for the backward pass, measured on a copy of the run's network
  for 2 images at the run's size and precision, plus the backward pass's working set (taken as large
  as extraction's, below), times the images a step forwards with gradients;
- feature extraction: ``data.eval_batch_size`` images through the network without gradients (3× the
  largest layer output: its input, itself and one temporary) and the N×D feature matrix;
- the clustering stage (host memory): features, kNN lists, the k-reciprocal encodings and the sparse
  Jaccard matrix — about ``4·k1`` entries per row when the clusterer reads only distances up to eps,
  every pair (N per row) when it reads all of them (HDBSCAN, ``clustering.eps auto``);
- evaluation: query and gallery features and one chunk of their distances.

On a CUDA device the training step and extraction count against its free memory; the clustering stage
and evaluation against the host's. The host budget is ``MemAvailable`` (within the container's cgroup
limit, if lower); ``UDAREID_MEMORY_LIMIT`` (e.g. ``8GiB``) sets both budgets instead, for a shared
machine or an estimate that is wrong for yours. Estimates count tensors, not the allocator's slack or
the loader's workers: a run refused here would not have fitted; one allowed can still be tight.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError

MEMORY_LIMIT_ENV = "UDAREID_MEMORY_LIMIT"
GIB = float(1 << 30)
MIB = float(1 << 20)

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
          "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}
#: Jaccard entries kept per row when the clusterer reads distances up to eps ≤ this: measured ≤ 1.4·k1
#: (clusters of up to 40 images, k1 20–30); 4·k1 leaves room. Above it every pair is kept.
JACCARD_CUT_BELOW = 0.9
JACCARD_ENTRIES_PER_K1 = 4
JACCARD_BYTES_PER_ENTRY = 12  # int32 column + float32 value, and the int32 of a transposed copy
JACCARD_CHUNK_BYTES = 128 << 20  # the candidate buffers of one chunk of rows (clustering.jaccard)
KNN_BLOCK_BYTES = 2 * 4096 * 4096 * 4  # the CPU search's block product and its bf16 copy
EVALUATION_CHUNK_BYTES = 32 * 1024 * 1024 * 24  # 32M distances with their sort order and match flags


def parse_size(text: str, *, name: str = MEMORY_LIMIT_ENV) -> int:
    """Bytes of ``8GiB``, ``512 MB``, ``1.5g`` or a plain number of bytes (units are powers of 1024)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if match is None or match.group(2).lower() not in _UNITS or float(match.group(1)) <= 0:
        raise ConfigError(f"{name}={text!r}: expected a size such as 8GiB, 512MiB or a number of bytes")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def host_available_bytes() -> int:
    """What this process may still allocate on the host: MemAvailable, or the cgroup's room if less."""
    available = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    if available is None:  # no /proc (not Linux): psutil is not a dependency, so no limit is known
        return 1 << 62
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        with contextlib.suppress(OSError, ValueError):
            limit = Path(limit_file).read_text().strip()
            if limit != "max" and int(limit) < 1 << 60:
                available = min(available, int(limit) - int(Path(usage_file).read_text().strip()))
    return max(available, 0)


def budgets(device: torch.device) -> dict[str, tuple[int, str]]:
    """``{"device": (bytes, where), "host": (bytes, where)}``: what each phase may use."""
    override = os.environ.get(MEMORY_LIMIT_ENV)
    if override:
        size = parse_size(override)
        said = f"allowed by {MEMORY_LIMIT_ENV}={override.strip()}"
        return {"device": (size, said), "host": (size, said)}
    host = (host_available_bytes(), "available on this machine")
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return {"device": (free, f"free on {device}"), "host": host}
    return {"device": host, "host": host}


@dataclass(frozen=True)
class NetworkFootprint:
    """Memory of one network, measured at the run's image size and precision."""

    training_bytes_per_image: float  # kept by autograd for the backward pass
    extraction_bytes_per_image: float  # peak working set of a forward pass without gradients
    parameters: int
    feature_dim: int


def network_footprint(network: nn.Module, height: int, width: int, device: torch.device) -> NetworkFootprint:
    """Measured on a copy (the run's BatchNorm statistics stay as they are) with 2 random images."""
    probe = copy.deepcopy(network).to(device).train()
    images = torch.randn(2, 3, height, width, device=device,  # not from the run's random stream
                         generator=torch.Generator(device=device).manual_seed(0))
    saved: dict[int, int] = {}
    weights = {tensor.untyped_storage().data_ptr() for tensor in [*probe.parameters(), *probe.buffers()]}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:  # weights are counted once, as state
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        probe(images)
    largest = [0]

    def record(module: nn.Module, inputs, output) -> None:
        if isinstance(output, torch.Tensor):
            largest[0] = max(largest[0], output.numel() * output.element_size())

    probe.eval()
    hooks = [module.register_forward_hook(record) for module in probe.modules() if not list(module.children())]
    try:
        with torch.no_grad():
            features = probe(images)
    finally:
        for hook in hooks:
            hook.remove()
    features = features[0] if isinstance(features, (tuple, list)) else features
    return NetworkFootprint(training_bytes_per_image=sum(saved.values()) / 2,
                            extraction_bytes_per_image=3 * largest[0] / 2,
                            parameters=sum(p.numel() for p in probe.parameters()),
                            feature_dim=int(features.reshape(2, -1).shape[1]))


@dataclass(frozen=True)
class Need:
    """The estimated peak of one phase of the run."""

    phase: str  # "a training step", ...
    where: str  # "device" or "host"
    bytes: float
    breakdown: str  # what it is made of
    settings: str  # the settings that size it, KEY=VALUE


def jaccard_bytes(num_samples: int, k1: int, max_distance: float | None) -> float:
    """The clustering stage's working set for N features: kNN lists, encodings, Jaccard matrix."""
    n = num_samples
    per_row = n if max_distance is None or max_distance > JACCARD_CUT_BELOW else min(n, JACCARD_ENTRIES_PER_K1 * k1)
    knn = n * (k1 + 1) * 12 + min(KNN_BLOCK_BYTES, 2 * n * n * 4)
    encodings = 2 * n * JACCARD_ENTRIES_PER_K1 * k1 * JACCARD_BYTES_PER_ENTRY
    matrix = 2 * n * per_row * JACCARD_BYTES_PER_ENTRY  # the matrix, and the clusterer's view of it
    return knn + encodings + matrix + JACCARD_CHUNK_BYTES


def _gib(value: float) -> str:
    return f"{value / GIB:.1f} GiB" if value >= 0.1 * GIB else f"{value / MIB:.0f} MiB"


def run_needs(*, footprint: NetworkFootprint, images_per_step: float, step_settings: str, eval_batch_size: int,
              optimiser_states: int, weight_copies: int, memory_rows: int, extracted: int, clustered: int,
              k1: int, max_distance: float | None, clustering_settings: str, query: int, gallery: int,
              world_size: int = 1) -> list[Need]:
    """The phases of a run and what each needs (per process; ``images_per_step`` per process)."""
    d = footprint.feature_dim
    state = footprint.parameters * 4 * (2 + optimiser_states + weight_copies) + memory_rows * d * 4
    state_text = f"{_gib(state)} of weights, gradients, optimiser state and feature memory"
    # the saved tensors, and the backward pass's working set on top of them (as large as a forward's).
    # Against the measured peak of a step on this CPU: ResNet-50, 32 images of 256×128: 2.05 GiB estimated,
    # 2.05 measured; ResNet-18, 64 of 128×64: 0.40 / 0.45; ResNet-18, 128 of 256×128: 2.57 / 1.97.
    per_image = footprint.training_bytes_per_image + footprint.extraction_bytes_per_image
    needs = [
        Need("a training step", "device", state + images_per_step * per_image,
             f"{images_per_step:g} images × {_gib(per_image)} kept for and used by the backward pass "
             f"+ {state_text}", step_settings),
        Need("feature extraction", "device", state + eval_batch_size * footprint.extraction_bytes_per_image,
             f"{eval_batch_size} images × {_gib(footprint.extraction_bytes_per_image)} + {state_text}",
             f"data.eval_batch_size={eval_batch_size}"),
    ]
    if clustered:
        needs.append(Need("the clustering stage", "host", extracted * d * 4 + jaccard_bytes(clustered, k1, max_distance),
                          f"{extracted} features of {d} dimensions and the Jaccard distances of {clustered} images"
                          + (" (every pair: the clusterer reads all distances)"
                             if max_distance is None or max_distance > JACCARD_CUT_BELOW else ""),
                          clustering_settings))
    if query and gallery:
        needs.append(Need("evaluation", "host", (query + gallery) * d * 4 + EVALUATION_CHUNK_BYTES,
                          f"{query} query and {gallery} gallery features and one chunk of distances",
                          "the evaluated dataset's size"))
    return needs


def needs_of_run(config, method, footprint: NetworkFootprint, *, batch_size: int, batch_key: str, world_size: int,
                 target_images: int, source_images: int, source_ids: int, query: int, gallery: int) -> list[Need]:
    """:func:`run_needs` for a TrainingLoop's config and method (``engine.loop``)."""
    from ..clustering.cluster import make_clusterer
    from .epoch_labels import clusterer_options

    c, data = config.clustering, config.data
    max_distance: float | None = None
    if method.clusters:
        clusterer = make_clusterer(c.clusterer, clusterer_options(config))
        max_distance = clusterer.max_distance if clusterer.input_kind == "distance" else (
            c.eps if isinstance(c.eps, float) else None)
    optimiser = config.optim.optimizer
    extracted = target_images + (source_images if method.uses_source_batches else 0) if method.clusters else 0
    return run_needs(
        footprint=footprint,
        images_per_step=batch_size / world_size * method.gradient_forwards_per_image(),
        step_settings=f"{batch_key}={batch_size}, data.height={data.height}, data.width={data.width}",
        eval_batch_size=data.eval_batch_size,
        optimiser_states=2 if optimiser.startswith("adam") else 1,
        weight_copies=method.weight_copies,
        memory_rows=target_images + source_ids if method.clusters else 0,
        extracted=extracted,
        clustered=target_images if method.clusters else 0,
        k1=c.k1,
        max_distance=max_distance,
        clustering_settings=f"clustering.clusterer={c.clusterer}" + (", clustering.eps=auto" if c.eps == "auto" else "")
        + f", clustering.k1={c.k1}",
        query=query,
        gallery=gallery,
        world_size=world_size,
    )


def check_run_fits(loop, source, trained: list, evaluated, target_samples: list) -> None:
    """Before a TrainingLoop's first batch (``engine.loop``): a batch the data can fill, and phases that
    fit in memory. The network is measured on a fresh copy built with the run's random stream set aside,
    so the run trains exactly as it would without the check."""
    config, method, data = loop.config, loop.method, loop.config.data
    names = ", ".join(dataset.name for dataset in trained)
    for images, what in ((len(target_samples), f"training images of {names}"),
                         (len(source.train) if source is not None and method.uses_source_batches else None,
                          f"training images of the source {source.name if source is not None else ''}")):
        if images is not None and loop.batch_size > images:
            raise ConfigError(f"{loop.batch_key}={loop.batch_size}: more than the {images} {what}; "
                              f"a batch can hold at most {images}")
    with torch.random.fork_rng(devices=[loop.device] if loop.device.type == "cuda" else []):
        probe, _ = method.build_model(dataclasses.replace(config.model, init=None),
                                      method.num_classes(target_samples), loop.precision.dtype)
        footprint = network_footprint(method.prepare_model(probe), data.height, data.width, loop.device)
    del probe
    labelled = evaluated is not None and bool(evaluated.query) and bool(evaluated.gallery)
    needs = needs_of_run(
        config, method, footprint, batch_size=loop.batch_size, batch_key=loop.batch_key,
        world_size=loop.dist.world_size, target_images=len(target_samples),
        source_images=len(source.train) if source is not None else 0,
        source_ids=source.num_train_ids if source is not None else 0,
        query=len(evaluated.query) if labelled else 0, gallery=len(evaluated.gallery) if labelled else 0)
    check_needs(needs, loop.device, processes_on_host=loop.dist.world_size if loop.device.type != "cuda" else 1)


def check_extraction(network: nn.Module, data_config, images: int, device: torch.device, *,
                     held: bool = True) -> None:
    """For ``evaluate`` / ``extract``: one batch of ``data.eval_batch_size`` images through the network,
    and the features of ``images`` when they are ``held`` in memory (not streamed to a file), fit."""
    footprint = network_footprint(network, data_config.height, data_config.width, device)
    batch = min(data_config.eval_batch_size, images)
    features = images * footprint.feature_dim * 4 if held else 0
    need = footprint.parameters * 4 + batch * footprint.extraction_bytes_per_image + features
    check_needs([Need("feature extraction", "device", need,
                      f"{batch} images × {_gib(footprint.extraction_bytes_per_image)}"
                      + (f" and {images} features" if held else ""),
                      f"data.eval_batch_size={data_config.eval_batch_size}, data.height={data_config.height}, "
                      f"data.width={data_config.width}")], device)


def check_needs(needs: list[Need], device: torch.device, *, processes_on_host: int = 1) -> None:
    """Raise ConfigError naming the first phase that cannot fit, with its estimate and the budget."""
    available = budgets(device)
    for need in needs:
        on_host = need.where == "host" or device.type != "cuda"
        copies = processes_on_host if on_host and need.where == "device" else 1
        budget, said = available["host" if on_host else "device"]
        total = need.bytes * copies
        if total > budget:
            each = f" in each of {copies} processes" if copies > 1 else ""
            raise ConfigError(
                f"{need.settings}: {need.phase} needs about {_gib(total)}{each} ({need.breakdown}), more than the "
                f"{_gib(budget)} {said}; lower the setting(s) named, or set {MEMORY_LIMIT_ENV} if this estimate "
                f"is wrong for your machine")


__all__ = ["MEMORY_LIMIT_ENV", "NetworkFootprint", "Need", "budgets", "check_extraction", "check_needs", "check_run_fits", "host_available_bytes",
           "jaccard_bytes", "needs_of_run", "network_footprint", "parse_size", "run_needs"]
