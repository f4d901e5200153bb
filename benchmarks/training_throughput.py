"""Training and extraction throughput, fp32 against mixed precision, each against a bare pass, as JSON.

    python benchmarks/training_throughput.py                       # paper and synthetic sizes, fp32 and auto
    python benchmarks/training_throughput.py --sizes paper --precisions fp32,bf16 --steps 4

Also ``udareid bench throughput`` in a source checkout. For each size and precision, in one process:

* **adaptation step**: SpCL UDA's step as the loop runs it (``engine.loop.step_losses`` and
  ``apply_step``: source and target batches through the model with domain-specific BN, hybrid-memory
  losses, backward, Adam, memory update), against a **bare** forward/backward of the same model on the
  same images (a sum of squares of the features as the loss, no memory, no optimiser);
* **feature extraction**: ``models.features.extract_features`` over JPEG files written in a temporary
  folder (decoding, resizing, the DataLoader, normalising on the device), against a bare forward of the
  same images already in memory, and against the **loader alone** (the same DataLoader with no model:
  the rate at which this machine's CPUs could feed a GPU, to compare with a GPU's bare forward rate),
  also with the normalisation in the workers and float32 batches (the pipeline before the device half).

Sizes: ``paper`` = the SpCL paper recipe (ResNet-50, 256×128; the per-domain batch is ``--paper-batch``,
16 by default instead of the recipe's 64, to keep a CPU run short; the ratios barely depend on it),
``synthetic`` = the README job's recipe (ResNet-18, 64×32, 32 per domain). Images/s count every image
the step forwards (source + target). Weights are random (the speed does not depend on them).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from uda_reid.clustering.cluster import ClusterResult
from uda_reid.config import apply_overrides, find_recipe, load_recipe
from uda_reid.data.layouts import Sample
from uda_reid.data.image_dataset import ImageDataset
from uda_reid.data.transforms import build_test_transform, finish_batch, pixel_finish
from uda_reid.engine.device_speed import apply_speed, wanted
from uda_reid.device import loader_options, loader_workers, resolve_device
from uda_reid.engine.loop import apply_step, step_losses
from uda_reid.engine.optim import build_optimizer
from uda_reid.methods import AdaptContext, build_method
from uda_reid.models.factory import build_model
from uda_reid.models.normalization import with_resolved_normalization
from uda_reid.models.features import eval_loader, extract_features
from uda_reid.precision import PRECISIONS, resolve_precision

SIZES = {
    # name: (recipe, source classes, target images in the memory)
    "paper": ("spcl_market1501_to_dukemtmc", 751, 16522),
    "synthetic": ("spcl_synthx_to_synthm", 150, 2400),
}


def _sync() -> None:
    if torch.cuda.is_available():  # a GPU runs kernels asynchronously: time their completion
        torch.cuda.synchronize()


def _timed(function, steps: int, warmup: int) -> float:
    """Seconds per call, median of ``steps`` after ``warmup`` calls (the GPU's work finished in each)."""
    for _ in range(warmup):
        function()
    _sync()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        function()
        _sync()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def _setup(size: str, precision: str, device: torch.device, paper_batch: int):
    recipe, source_classes, target_images = SIZES[size]
    overrides: dict[str, Any] = {"device": str(device), "precision": precision, "model.init": None}
    if size == "paper":
        overrides["data.batch_size"] = paper_batch
    config, _ = with_resolved_normalization(apply_overrides(load_recipe(find_recipe(recipe)), overrides))
    resolved = resolve_precision(config.precision, device)
    method = build_method(config)
    model, _ = build_model(config.model, compute_dtype=resolved.dtype)
    model = method.prepare_model(model)
    model.to(device).train()
    apply_speed(model, config.speed, device)  # as the loop does: channels-last, cudnn.benchmark on a GPU
    targets = [Sample(f"t{i}.jpg", -1, i % 6) for i in range(target_images)]
    sources = [Sample(f"s{i}.jpg", i % source_classes, i % 6) for i in range(source_classes * 4)]
    ctx = AdaptContext(config=config, model=model, device=device, target_samples=targets, source_samples=sources,
                       num_source_classes=source_classes, progress=False)
    rows = source_classes + target_images
    memory_state = {"features": torch.nn.functional.normalize(torch.randn(rows, model.feature_dim), dim=1),
                    "labels": torch.arange(rows)}
    method.setup(ctx, {"memory": memory_state, "criterion": method.criterion.state_dict()})
    labels = np.arange(target_images) // 4  # clusters of 4 images
    method.on_clusters(ClusterResult(labels, int(labels.max()) + 1, 0), torch.empty(0), ctx)
    return config, resolved, method, model, ctx


def _step_figures(size: str, precision: str, device: torch.device, steps: int, paper_batch: int) -> dict[str, Any]:
    config, resolved, method, model, ctx = _setup(size, precision, device, paper_batch)
    batch_size, height, width = config.data.batch_size, config.data.height, config.data.width
    generator = torch.Generator().manual_seed(0)
    # what the loader hands the loop: uint8 pixels (pinned for a GPU) and erasing rectangles
    pixels = {}
    for domain in ("source", "target"):
        values = torch.randint(0, 256, (batch_size, 3, height, width), dtype=torch.uint8, generator=generator)
        boxes = torch.tensor([[2, 1, height // 3, width // 3]] * batch_size, dtype=torch.int32)
        pixels[domain] = {"pixels": values.pin_memory() if device.type == "cuda" else values, "erase": boxes}
    extra = {"source": {"pid": torch.randint(0, ctx.num_source_classes, (batch_size,))},
             "target": {"index": torch.randperm(len(ctx.target_samples))[:batch_size]}}
    finish = pixel_finish(config.data)
    optimizer = build_optimizer(model, config.optim, fused=wanted(config.speed.fused_optimizer, device))
    optimizer.add_param_group({"params": [], "name": "heads"})
    scaler = resolved.grad_scaler()

    def adaptation_step() -> None:  # the loop's step: the device half of the transforms, losses, update
        batch = {d: {**finish_batch({"image": pixels[d]}, finish, device), **extra[d]} for d in pixels}
        _, losses = step_losses(method, [], ctx, batch)
        apply_step(method, [], ctx, sum(losses.values()), optimizer, scaler)

    on_device = {d: finish(pixels[d], device) for d in pixels}

    def bare_step() -> None:  # the network alone, on images already on the device
        model.zero_grad(set_to_none=True)
        loss = sum(model(on_device[d]).features.square().mean() for d in ("source", "target"))
        loss.backward()

    step_seconds = _timed(adaptation_step, steps, warmup=1)
    bare_seconds = _timed(bare_step, steps, warmup=1)
    images_per_step = 2 * batch_size
    return {
        "arch": config.model.arch, "image": [height, width], "images_per_step": images_per_step,
        "precision": resolved.name,
        "step_images_per_s": round(images_per_step / step_seconds, 1),
        "bare_images_per_s": round(images_per_step / bare_seconds, 1),
        "step_vs_bare": round(bare_seconds / step_seconds, 3),
    }


def _extraction_figures(size: str, precision: str, device: torch.device, count: int, folder: Path) -> dict[str, Any]:
    config, resolved, _, model, _ = _setup(size, precision, device, 16)
    height, width = config.data.height, config.data.width
    rng = np.random.default_rng(0)
    samples = []
    for i in range(count):  # person crops are stored at about the training size
        path = folder / f"{size}_{i:05d}.jpg"
        if not path.exists():
            Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path, quality=90)
        samples.append(Sample(str(path), -1, 0))
    tensors = torch.randn(count, 3, height, width)
    model.eval()

    def extraction() -> None:
        extract_features(model, samples, config.data, device=device, progress=False)

    @torch.no_grad()
    def bare_forward() -> None:
        for start in range(0, count, config.data.eval_batch_size):
            model(tensors[start : start + config.data.eval_batch_size].to(device))

    def loader_only() -> None:  # what the loader alone delivers: decode, resize, uint8 pixels, batch
        for batch in eval_loader(samples, config.data, device):
            batch["image"]["pixels"].to(device, non_blocking=True)

    def loader_float() -> None:  # the same with the arithmetic in the workers (float32 batches, as before)
        whole = ImageDataset(samples, build_test_transform(config.data))
        for batch in DataLoader(whole, batch_size=config.data.eval_batch_size, **loader_options(config.data.workers, device)):
            batch["image"].to(device, non_blocking=True)

    extract_seconds = _timed(extraction, 2, warmup=1)
    bare_seconds = _timed(bare_forward, 2, warmup=1)
    loader_seconds = _timed(loader_only, 2, warmup=1)
    float_seconds = _timed(loader_float, 2, warmup=1)
    return {
        "images": count, "batch": config.data.eval_batch_size, "workers": loader_workers(config.data.workers),
        "extract_images_per_s": round(count / extract_seconds, 1),
        "bare_images_per_s": round(count / bare_seconds, 1),
        "loader_only_images_per_s": round(count / loader_seconds, 1),
        # normalising in the workers and moving float32 (4× the bytes): what the device half saves
        "loader_float32_images_per_s": round(count / float_seconds, 1),
        "extract_vs_bare": round(bare_seconds / extract_seconds, 3),
        # above 1: this machine's loader could feed a model that forwards that many times faster
        "loader_vs_bare": round(bare_seconds / loader_seconds, 3),
    }


@click.command()
@click.option("--sizes", default="paper,synthetic", show_default=True, help="Comma-separated: paper, synthetic.")
@click.option("--precisions", default="fp32,auto", show_default=True, help=f"Comma-separated, of {', '.join(PRECISIONS)}.")
@click.option("--steps", type=click.IntRange(min=1), default=3, show_default=True, help="Timed steps (median) after one warm-up.")
@click.option("--paper-batch", type=click.IntRange(min=4), default=16, show_default=True, help="Images per domain in a paper-size step.")
@click.option("--extract-images", type=click.IntRange(min=1), default=512, show_default=True,
              help="JPEG files written and extracted per size and precision.")
@click.option("--device", default="auto", show_default=True, help="auto (cuda when available, else cpu), cpu, cuda or cuda:N.")
def main(sizes: str, precisions: str, steps: int, paper_batch: int, extract_images: int, device: str) -> None:
    torch_device = resolve_device(device)
    names = [s.strip() for s in sizes.split(",") if s.strip()]
    unknown = sorted(set(names) - set(SIZES))
    if unknown:
        raise click.BadParameter(f"unknown size(s) {', '.join(unknown)}; known: {', '.join(SIZES)}", param_hint="--sizes")
    modes = [p.strip() for p in precisions.split(",") if p.strip()]
    bad = sorted(set(modes) - set(PRECISIONS))
    if bad:
        raise click.BadParameter(f"unknown precision(s) {', '.join(bad)}; known: {', '.join(PRECISIONS)}", param_hint="--precisions")
    report: dict[str, Any] = {"device": str(torch_device), "threads": torch.get_num_threads(), "sizes": {}}
    with tempfile.TemporaryDirectory() as folder:
        for size in names:
            entry: dict[str, Any] = {}
            for mode in modes:
                name = resolve_precision(mode, torch_device).name
                if name in entry:
                    continue  # auto resolved to a mode already measured
                entry[name] = {"step": _step_figures(size, mode, torch_device, steps, paper_batch),
                               "extraction": _extraction_figures(size, mode, torch_device, extract_images, Path(folder))}
            if "fp32" in entry:
                for name, figures in entry.items():
                    if name != "fp32":
                        figures["step_speedup_vs_fp32"] = round(
                            figures["step"]["step_images_per_s"] / entry["fp32"]["step"]["step_images_per_s"], 3)
                        figures["extraction_speedup_vs_fp32"] = round(
                            figures["extraction"]["extract_images_per_s"] / entry["fp32"]["extraction"]["extract_images_per_s"], 3)
            report["sizes"][size] = entry
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
