"""Self-supervised pre-training of a re-ID backbone (``udareid pretrain``): MoCo v2 or UP-ReID.

Unlabelled images (a folder, or datasets' train splits) -> per epoch a seeded permutation cut into
global batches (each process takes its equal share) -> two augmented views (+ the original image for
UP-ReID) -> the method's losses -> SGD on the query encoder, EMA of the key encoder, keys into the
queues -> per epoch a row of figures, ``backbone.pth`` (the query backbone with torchvision's key
names, what ``--init moco:PATH`` reads) and ``last.pt`` (everything ``--resume`` needs). With
``eval_datasets`` the frozen backbone's retrieval mAP is measured too, as ``udareid evaluate
--weights moco:backbone.pth`` would.

It shares the adaptation loop's run folder, log, checkpoint format, precision and torchrun handling;
its step is its own (two views and queues instead of clusters and memories).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..config import ModelConfig, RunConfig, save_config
from ..data.datasets import Sample, load_dataset, options_for
from ..data.image_dataset import ImageDataset
from ..data.transforms import ContrastiveViews, build_pretrain_transform, build_test_transform
from ..device import loader_workers
from ..distributed import DistributedContext, bn_groups_per_process, init_distributed
from ..errors import ConfigError, TrainingDivergedError
from ..evaluation.protocol import evaluate_model
from ..losses.contrastive import MMD_ESTIMATORS
from ..fileio import atomic_path, atomic_write_text, remove_stale_temporaries
from ..models.checkpoint_import import PRETRAIN_STAGE
from ..models.checkpoints import load_checkpoint, save_checkpoint
from ..models.factory import build_model
from ..precision import resolve_precision
from ..pretraining import PRETRAINERS
from .loop import rank_rng_states
from .optim import build_optimizer, build_scheduler
from .run_log import RunLog
from .seeding import rng_state, seed_everything, set_rng_state

BACKBONE_FILE = "backbone.pth"


def pretrain_samples(config: RunConfig, data_root: str | Path | None = None) -> list[Sample]:
    """The train images of every ``pretrain.datasets`` entry, joined (identities are not used)."""
    if not config.pretrain.datasets:
        raise ConfigError("pretrain.datasets is empty: give --images DIR or --dataset NAME (repeatable)")
    samples: list[Sample] = []
    for spec in config.pretrain.datasets:
        samples += load_dataset(spec, data_root, **options_for(spec, config.dataset_options)).train
    return samples


def check_pretrain_batch(config: RunConfig, world_size: int, images: int | None = None) -> tuple[int, int]:
    """(images, BN groups) per process of a global ``pretrain.batch_size`` normalised in ``pretrain.bn_groups``
    groups of the global batch (so a recipe trains alike on 1 or 8 processes), or a ConfigError saying
    what does not divide."""
    options = config.pretrain
    batch = options.batch_size
    if batch % world_size:
        raise ConfigError(f"pretrain.batch_size {batch} does not split over {world_size} processes")
    local, groups = batch // world_size, bn_groups_per_process(options.bn_groups, world_size, section="pretrain")
    if local % groups:
        raise ConfigError(f"pretrain.bn_groups {options.bn_groups} does not divide pretrain.batch_size {batch} "
                          f"into equal groups")
    if images is not None and images < batch:
        raise ConfigError(f"{images} images are fewer than one batch (pretrain.batch_size {batch})")
    return local, groups


class PretrainRun:
    """One pre-training run in ``run_dir``; ``run()`` returns the summary (also ``summary.json``)."""

    def __init__(self, config: RunConfig, run_dir: str | Path, *, data_root: str | Path | None = None,
                 resume: bool = False, progress: bool = True, dist: DistributedContext | None = None) -> None:
        self.config = config
        self.options = config.pretrain
        self.run_dir = Path(run_dir)
        self.data_root = data_root
        self.resume = resume
        self.dist = dist if dist is not None else init_distributed(config.device)
        self.progress = progress and self.dist.is_main
        self.device = self.dist.device
        self.precision = resolve_precision(config.precision, self.device)
        PRETRAINERS.get(self.options.method)  # an unknown method or estimator is named before any work
        if self.options.mmd not in MMD_ESTIMATORS:
            raise ConfigError(f"pretrain.mmd: unknown estimator {self.options.mmd!r}; known: {', '.join(MMD_ESTIMATORS)}")
        self.local_batch, self.local_groups = check_pretrain_batch(config, self.dist.world_size)
        if self.dist.is_main:
            remove_stale_temporaries(self.run_dir)
        self.log = RunLog(self.run_dir, resume=resume, writes=self.dist.is_main,
                          screen="pre-training" if self.dist.is_main else None, epochs=self.options.epochs,
                          title=f"{self.run_dir.name}: {self.options.method} pre-training, {config.model.arch}")

    def _say(self, message: str) -> None:
        self.log.info(message)
        if self.dist.is_main:
            tqdm.write(message, file=sys.stderr)

    def run(self) -> dict[str, Any]:
        config, options, dist = self.config, self.options, self.dist
        seed_everything(config.seed)
        samples = pretrain_samples(config, self.data_root)
        check_pretrain_batch(config, dist.world_size, len(samples))
        state = self._resume_state()
        if state is not None and state["epoch"] + 1 >= options.epochs and (self.run_dir / "summary.json").exists():
            self._say(f"resume: {self.run_dir} already finished its {options.epochs} epochs; nothing to do")
            return json.loads((self.run_dir / "summary.json").read_text())
        if dist.is_main and state is None:
            save_config(config, self.run_dir / "config.yaml")

        local = dataclasses.replace(options, bn_groups=self.local_groups)
        method = PRETRAINERS.get(options.method)(config.model.arch, local).to(self.device)
        method.compute_dtype = self.precision.dtype
        optimizer = build_optimizer(method.encoder_q, config.optim)
        scheduler = build_scheduler(optimizer, config.optim, options.epochs)
        grad_scaler = self.precision.grad_scaler()
        iterations = options.iters_per_epoch or len(samples) // options.batch_size
        self._say(f"pre-training: {options.method}, {config.model.arch}, {len(samples)} images of "
                  f"{', '.join(options.datasets)}, {options.epochs} epochs of {iterations} batches of "
                  f"{options.batch_size}, queue {options.queue_size}, BN over {options.bn_groups} groups of the batch"
                  + ("" if self.precision.dtype is None else f", backbone in {self.precision.name}"))
        start_epoch = 0
        if state is not None:
            train_state = state["train_state"]
            method.load_state_dict(train_state["method"])
            optimizer.load_state_dict(train_state["optimizer"])
            scheduler.load_state_dict(train_state["scheduler"])
            if train_state.get("grad_scaler"):
                grad_scaler.load_state_dict(train_state["grad_scaler"])
            rng_states = rank_rng_states(train_state, dist.world_size)
            if rng_states is not None:
                set_rng_state(rng_states[dist.rank], self.device)
            else:
                dist.seed_rank_streams(config.seed + state["epoch"] + 1)
            start_epoch = state["epoch"] + 1
            self.log.truncate_after(start_epoch)
            self._say(f"resumed from {self.run_dir / 'last.pt'}: continuing at epoch {start_epoch + 1}")
        else:
            dist.seed_rank_streams(config.seed)

        views = ContrastiveViews(build_pretrain_transform(config.data, options),
                                 build_test_transform(config.data) if method.needs_original else None)
        dataset = ImageDataset(samples, views)
        for epoch in range(start_epoch, options.epochs):
            started = time.perf_counter()
            row: dict[str, Any] = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
            row.update(self._train_epoch(method, optimizer, grad_scaler, dataset, epoch, iterations))
            scheduler.step()
            due = options.eval_every > 0 and (epoch + 1) % options.eval_every == 0
            if config.eval_datasets and (due or epoch + 1 == options.epochs):
                self._save_backbone(method)
                row.update(self._evaluate_backbone())
            row["epoch_seconds"] = round(time.perf_counter() - started, 2)
            self.log.append(row)
            self._save_backbone(method)
            self._save_last(method, optimizer, scheduler, grad_scaler, epoch)
        return self._finish()

    # ------------------------------------------------------------------ pieces
    def _resume_state(self) -> dict[str, Any] | None:
        if not self.resume:
            return None
        path = self.run_dir / "last.pt"
        if not self.dist.broadcast_object(path.exists()):
            self.log.truncate_after(-1)
            return None
        return load_checkpoint(path, expect_config=self.config)

    def _batches(self, count: int, epoch: int, iterations: int) -> list[list[int]]:
        """This process's share of each global batch of a permutation seeded by (seed, epoch): the same
        on every process and after --resume, whatever the random streams did."""
        generator = torch.Generator().manual_seed(self.config.seed * 100003 + epoch)
        order, batch = [], self.options.batch_size
        while len(order) < iterations * batch:
            order += torch.randperm(count, generator=generator).tolist()
        mine = slice(self.dist.rank * self.local_batch, (self.dist.rank + 1) * self.local_batch)
        return [order[i * batch : (i + 1) * batch][mine] for i in range(iterations)]

    def _train_epoch(self, method, optimizer, grad_scaler, dataset: ImageDataset, epoch: int,
                     iterations: int) -> dict[str, float]:
        loader = DataLoader(dataset, batch_sampler=self._batches(len(dataset), epoch, iterations),
                            num_workers=loader_workers(self.config.data.workers), pin_memory=self.device.type == "cuda")
        method.train()
        totals: dict[str, float] = {}
        bar = tqdm(loader, desc=f"pre-training epoch {epoch + 1}/{self.options.epochs}", disable=not self.progress,
                   leave=False)
        for iteration, batch in enumerate(bar):
            views = {name: images.to(self.device, non_blocking=True) for name, images in batch["image"].items()}
            losses = method(views, gather=self.dist.gather_batch)
            values = dict(zip(losses, self.dist.mean(torch.stack([v.detach().float() for v in losses.values()])).tolist()))
            if not math.isfinite(values["loss"]):
                raise TrainingDivergedError(
                    f"loss became {values['loss']} at epoch {epoch + 1}, iteration {iteration + 1}; stopped. The last "
                    f"good checkpoint {self.run_dir / 'last.pt'} is kept; try a lower optim.lr")
            optimizer.zero_grad(set_to_none=True)
            grad_scaler.scale(losses["loss"]).backward()
            self.dist.average_gradients(list(method.encoder_q.parameters()))
            grad_scaler.step(optimizer)
            grad_scaler.update()
            for key, value in values.items():
                totals[key] = totals.get(key, 0.0) + value
            bar.set_postfix(loss=f"{values['loss']:.3f}")
        self.dist.sync_buffers_from_main(method)  # BN statistics (and queues, already equal) as rank 0's
        if self.dist.is_distributed:
            self.dist.check_identical("query encoder weights", *method.encoder_q.parameters(), *method.queue.buffers(),
                                      cause="The gradient average or the key gathering is broken: please report it")
            self.log.info(f"epoch {epoch + 1}: weights and queue identical on all {self.dist.world_size} processes")
        return {key: round(value / max(1, iterations), 5) for key, value in totals.items()}

    def _save_backbone(self, method) -> None:
        """``backbone.pth``: the query backbone as a plain torchvision state dict (like LUPerson's release)."""
        if self.dist.is_main:
            with atomic_path(self.run_dir / BACKBONE_FILE) as tmp:
                torch.save(method.backbone_state(), tmp)
        self.dist.barrier()

    def _evaluate_backbone(self) -> dict[str, float]:
        """Retrieval figures of the frozen backbone (pooled features) on each of ``eval_datasets``."""
        config = self.config
        spec = f"moco:{self.run_dir / BACKBONE_FILE}"
        model, _ = build_model(ModelConfig(arch=config.model.arch, init=spec))
        model.to(self.device).compute_dtype = self.precision.dtype
        figures: dict[str, float] = {}
        for number, name in enumerate(config.eval_datasets):
            data = load_dataset(name, self.data_root, **options_for(name, config.dataset_options))
            result = evaluate_model(model, data, config.data, device=self.device, progress=self.progress,
                                    dist=self.dist)
            suffix = "" if number == 0 else f"_{data.name}"
            figures.update({f"{key}{suffix}": round(value, 2) for key, value in result.items()})
        return figures

    def _save_last(self, method, optimizer, scheduler, grad_scaler, epoch: int) -> None:
        rng_states = self.dist.all_gather_object(rng_state(self.device))
        if self.dist.is_main:
            save_checkpoint(self.run_dir / "last.pt", self.config, epoch, model=method.backbone_state(),
                            num_classes=0, best_mAP=-1.0, stage=PRETRAIN_STAGE,
                            train_state={"method": method.state_dict(), "optimizer": optimizer.state_dict(),
                                         "scheduler": scheduler.state_dict(), "grad_scaler": grad_scaler.state_dict(),
                                         "rng": rng_states})
        self.dist.barrier()

    def _finish(self) -> dict[str, Any]:
        last = self.log.rows[-1] if self.log.rows else {}
        summary = {"method": self.options.method, "arch": self.config.model.arch, "epochs": self.options.epochs,
                   "datasets": list(self.options.datasets), "backbone": str(self.run_dir / BACKBONE_FILE),
                   "init": f"moco:{self.run_dir / BACKBONE_FILE}",
                   "last": {k: v for k, v in last.items() if k != "epoch"}}
        if self.dist.is_main:
            atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=1) + "\n")
            self._say(f"pre-training done: {self.run_dir / BACKBONE_FILE}; start a run from it with "
                      f"--init moco:{self.run_dir / BACKBONE_FILE}")
        return summary


def pretrain(config: RunConfig, run_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Run (or with ``resume=True`` continue) a pre-training run; see :class:`PretrainRun`."""
    return PretrainRun(copy.deepcopy(config), run_dir, **kwargs).run()
