"""Supervised training on a labelled domain: ID loss (label smoothing) + batch-hard triplet.

This is the usual re-ID baseline and stage 1 of UDA (the source-trained model that adaptation
starts from). One epoch = ``train.iters_per_epoch`` P×K batches; evaluation every
``train.eval_every`` epochs and at the last one; ``last.pt`` every epoch and ``best.pt`` at the
best mAP, both written atomically; figures in ``metrics.jsonl`` / ``metrics.png``.

Under torchrun (``engine.distributed``) every process trains a DDP model on its slice of the same
global P×K batches (identity loss on the slice, batch-hard triplet on the gathered batch),
evaluation features are extracted in shares, and only rank 0 writes files.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..config import RunConfig, save_config
from ..data.datasets import load_dataset
from ..data.image_dataset import ImageDataset, readable_samples
from ..data.samplers import IdentitySampler
from ..data.transforms import build_train_transform
from ..errors import ConfigError, UdaReidError
from ..evaluation.protocol import evaluate_model
from ..fileio import atomic_write_text
from ..losses import batch_hard_triplet_loss
from ..models.batchnorm import convert_to_grouped_bn
from ..models.factory import build_model
from .checkpoints import load_checkpoint, save_checkpoint
from .distributed import DistributedContext, bn_groups_per_process, init_distributed, unwrap_model
from .optim import build_optimizer, build_scheduler
from .run_log import RunLog
from .seeding import seed_everything


class TrainingDivergedError(UdaReidError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def _iterations_per_epoch(config: RunConfig, num_ids: int) -> int:
    if config.train.iters_per_epoch > 0:
        return config.train.iters_per_epoch
    ids_per_batch = config.data.batch_size // config.data.num_instances
    return max(1, num_ids // ids_per_batch)


def train_supervised(
    config: RunConfig,
    run_dir: str | Path,
    *,
    data_root: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    dist: DistributedContext | None = None,
) -> dict[str, Any]:
    """Train on ``config.dataset``'s train split; returns the final figures (also in ``summary.json``).

    Under torchrun call it on every process (``dist``: the context of ``init_distributed``).
    """
    run_dir = Path(run_dir)
    dist = dist if dist is not None else init_distributed(config.device)
    progress = progress and dist.is_main
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)
    device = dist.device
    dataset = load_dataset(config.dataset, data_root)
    train_samples = dataset.train
    if config.data.skip_unreadable:
        train_samples = readable_samples(train_samples, progress=progress)

    log = RunLog(run_dir, resume=resume, writes=dist.is_main)
    if dist.is_main:
        save_config(config, run_dir / "config.yaml")
    network, report = build_model(config.model, num_classes=dataset.num_train_ids)
    # train.bn_groups counts groups of the global batch: each process computes its share of them.
    local_groups = bn_groups_per_process(config.train.bn_groups, dist.world_size, sync_bn=config.train.sync_bn,
                                         section="train")
    if config.data.batch_size % config.train.bn_groups:
        raise ConfigError(
            f"train.bn_groups ({config.train.bn_groups}) must divide data.batch_size ({config.data.batch_size}): "
            f"BatchNorm groups are equal parts of the batch"
        )
    if local_groups > 1:
        network = convert_to_grouped_bn(network, local_groups)
    network.to(device)
    # DDP when there are several processes; ``network`` is the model inside (state, evaluation).
    model = dist.wrap_model(network, sync_bn=config.train.sync_bn, sync_bn_key="train.sync_bn")
    network = unwrap_model(model)
    if report is not None:
        log.info(f"initial weights: {report}")
    optimizer = build_optimizer(model, config.optim)
    scheduler = build_scheduler(optimizer, config.optim)

    start_epoch, best_map = 0, -1.0
    if resume and (run_dir / "last.pt").exists():
        state = load_checkpoint(run_dir / "last.pt", expect_config=config)
        network.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best_map = state["epoch"] + 1, state.get("best_mAP", -1.0)
        log.truncate_after(state["epoch"] + 1)  # rows count epochs from 1
        log.info(f"resumed from {run_dir / 'last.pt'} at epoch {start_epoch}")
    dist.seed_rank_streams(config.seed + start_epoch)

    sampler = IdentitySampler(
        [s.pid for s in train_samples],
        cameras=[s.camid for s in train_samples],
        batch_size=config.data.batch_size,
        num_instances=config.data.num_instances,
        num_batches=_iterations_per_epoch(config, dataset.num_train_ids),
        seed=config.seed,
        num_replicas=dist.world_size,
        rank=dist.rank,
    )
    loader = DataLoader(
        ImageDataset(train_samples, build_train_transform(config.data)),
        batch_size=config.data.batch_size // dist.world_size,
        sampler=sampler,
        num_workers=config.data.workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
        persistent_workers=config.data.workers > 0,
    )
    processes = f", {dist.world_size} processes of {config.data.batch_size // dist.world_size} images per batch" if dist.is_distributed else ""
    log.info(
        f"training on {dataset.name}: {len(train_samples)} images, {dataset.num_train_ids} ids, "
        f"device {device}{processes}, {len(loader)} iterations x {config.train.epochs} epochs"
    )

    last_eval: dict[str, float] = {}
    for epoch in range(start_epoch, config.train.epochs):
        sampler.set_epoch(epoch)
        started = time.perf_counter()
        losses = _train_one_epoch(model, loader, optimizer, config, device, epoch, progress, dist)
        dist.sync_buffers_from_main(network)  # BN running statistics: rank 0's
        row: dict[str, Any] = {"epoch": epoch + 1, **losses, "lr": optimizer.param_groups[0]["lr"]}
        scheduler.step()
        row["epoch_seconds"] = round(time.perf_counter() - started, 2)
        is_last = epoch + 1 == config.train.epochs
        if is_last or (config.train.eval_every > 0 and (epoch + 1) % config.train.eval_every == 0):
            last_eval = evaluate_model(network, dataset, config.data, device=device, progress=progress, dist=dist)
            row.update(last_eval)
        improved = "mAP" in row and row["mAP"] > best_map
        if improved:
            best_map = row["mAP"]
        if dist.is_main:
            state = {
                "model": network.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "num_classes": dataset.num_train_ids,
            }
            if improved:
                save_checkpoint(run_dir / "best.pt", config, epoch, best_mAP=best_map, **state)
            save_checkpoint(run_dir / "last.pt", config, epoch, best_mAP=best_map, **state)
        dist.barrier()  # nobody reads a checkpoint before it is complete
        log.append(row)

    summary = {"dataset": dataset.name, "epochs": config.train.epochs, "best_mAP": best_map, "final": {}}
    summary["final"][dataset.name] = last_eval or evaluate_model(
        network, dataset, config.data, device=device, progress=progress, dist=dist
    )
    for name in config.eval_datasets:
        other = load_dataset(name, data_root)
        summary["final"][other.name] = evaluate_model(network, other, config.data, device=device, progress=progress,
                                                      dist=dist)
    for name, figures in summary["final"].items():
        log.info(f"final {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in figures.items()))
    if dist.is_main:
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    dist.barrier()
    return summary


def _train_one_epoch(
    model: torch.nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    config: RunConfig,
    device: torch.device,
    epoch: int,
    progress: bool,
    dist: DistributedContext,
) -> dict[str, float]:
    model.train()
    totals = {"loss_id": 0.0, "loss_triplet": 0.0, "loss": 0.0, "train_acc": 0.0}
    steps = 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.train.epochs}", disable=not progress, leave=False)
    for batch in bar:
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["pid"].to(device, non_blocking=True)
        output = model(images)
        loss_id = F.cross_entropy(output.logits, labels, label_smoothing=config.train.label_smoothing)
        # Batch-hard mining over the global batch (the identity in one process).
        loss_triplet = batch_hard_triplet_loss(dist.gather_batch(output.pooled), dist.gather_batch(labels),
                                               margin=config.train.triplet_margin)
        loss = config.train.id_loss_weight * loss_id + config.train.triplet_loss_weight * loss_triplet
        accuracy = (output.logits.argmax(dim=1) == labels).float().mean()
        # The global batch's figures: means over ranks of their equal-size slices'.
        values = dist.mean(torch.stack([v.detach().float() for v in (loss_id, loss_triplet, loss, accuracy)])).tolist()
        if not math.isfinite(values[2]):  # the same decision on every rank
            raise TrainingDivergedError(
                f"loss became {values[2]} at epoch {epoch + 1}, iteration {steps + 1} "
                f"(id {values[0]:.4g}, triplet {values[1]:.4g}); stopped. The last good "
                f"checkpoint is kept; try a lower optim.lr"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
        for key, value in zip(("loss_id", "loss_triplet", "loss", "train_acc"), values):
            totals[key] += value
        bar.set_postfix(loss=f"{values[2]:.3f}")
    return {key: round(value / max(steps, 1), 5) for key, value in totals.items()}
