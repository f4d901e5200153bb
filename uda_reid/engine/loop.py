"""The one training loop: ``udareid train``, the UDA source stage, ``adapt``, ``usl`` and ``pretrain``.

Per epoch: the training labels (``engine.epoch_labels``: person ids for supervised training, the
clustering stage and the method's refinement for adaptation, every image its own group for
pre-training) -> one epoch of training steps with the method's losses -> the method's files
(``backbone.pth`` for pre-training) -> evaluation every ``eval_every`` epochs -> the epoch's row in
``metrics.jsonl`` -> ``last.pt``. The first row (epoch 0) evaluates the initial model, the
direct-transfer figure adaptation is measured against (training from scratch skips it).

An **epoch** is ``iters_per_epoch`` batches of the method's settings section (``train``, ``adapt``
or ``pretrain``), or with ``iters_per_epoch: 0`` as many batches as one pass over the labelled
identities takes at K images each (pre-training: over the images; ``adapt.passes_per_epoch`` > 0:
that many passes over the labelled images instead).

The loop knows no method by name: everything method-specific goes through ``methods.base.Method``
(pre-training methods are Methods with other defaults: ``pretraining.base``).

Under torchrun (``engine.distributed``) every process runs this loop: features are extracted in
shares and gathered, rank 0 clusters and every rank receives its result, each rank trains on its
slice of the same global batches with a DDP model, and only rank 0 writes files.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..addons import build_add_ons
from ..config import RunConfig, check_config, save_config
from ..data.datasets import ReidDataset, Sample, load_dataset, options_for
from ..data.image_dataset import ImageDataset, readable_dataset
from ..data.samplers import batches_per_pass, build_batch_sampler, check_sampler_rule
from ..data.transforms import finish_batch, pixel_finish
from .device_speed import apply_speed, wanted
from ..device import loader_options
from ..distributed import (
    DistributedContext,
    bn_groups_per_process,
    check_batch_split,
    init_distributed,
    unwrap_model,
)
from ..errors import ConfigError, TrainingDivergedError
from ..evaluation.protocol import evaluate_model
from ..fileio import atomic_write_text, remove_stale_temporaries
from ..methods import AdaptContext, Method, StepOutput, build_method
from ..models.arithmetic_check import checked_precision
from ..models.batchnorm import convert_to_grouped_bn
from ..models.normalization import with_resolved_normalization
from ..precision import resolve_precision
from .epoch_labels import EpochLabelling, clusterer_options, ground_truth_clusters
from .memory_check import check_run_fits
from .optim import build_optimizer, build_scheduler, clip_gradients, set_weight_decay
from .run_checkpoints import RunCheckpoints
from .run_configs import source_stage_config, supervised_config
from .run_log import RunLog
from .seeding import rank_rng_states, seed_everything, set_rng_state

__all__ = ["TrainingLoop", "adapt", "train_supervised", "supervised_config", "source_stage_config",
           "step_losses", "apply_step", "clusterer_options",
           "ground_truth_clusters"]

#: How the screen and log name a run's epochs, by the method's settings section.
STAGE_NAMES = {"train": "training", "adapt": "adaptation", "pretrain": "pre-training"}


class TrainingLoop(EpochLabelling, RunCheckpoints):
    """One training run in ``run_dir``; ``run()`` returns the summary (also ``summary.json``).

    ``method``: the plug-in to train (default: ``adapt.method`` of ``config``). ``dist``: this
    process's place in a torchrun run (``engine.distributed``); by default read from the
    environment. ``resume``: continue from ``last.pt`` (or, when a UDA run was stopped in its source
    stage, from that stage's). ``with_add_ons`` False: the add-on sections are not acted on (the
    source stage).
    """

    def __init__(
        self,
        config: RunConfig,
        run_dir: str | Path,
        *,
        data_root: str | Path | None = None,
        resume: bool = False,
        progress: bool = True,
        dist: DistributedContext | None = None,
        stage_name: str | None = None,
        method: Callable[[RunConfig], Method] | None = None,
        with_add_ons: bool = True,
    ) -> None:
        # data.normalization auto is decided by the initial weights, before anything is written: config.yaml and
        # the checkpoints hold the statistics the run used, so evaluate / extract / export of its models use them.
        config, self.normalization_note = with_resolved_normalization(config)
        # The run's own copy: clustering.eps "auto" becomes the value derived from the data in it, while
        # the config as written is what config.yaml and the checkpoints hold and --resume compares with.
        self.config_as_written = config
        self.config = config = copy.deepcopy(config)
        self.run_dir = Path(run_dir)
        self.data_root = data_root
        self.resume = resume
        self.epoch_in_progress = 0  # 1-based while an epoch runs (a stopped command reports it)
        self.dist = dist if dist is not None else init_distributed(config.device)
        self.progress = progress and self.dist.is_main
        self.device = self.dist.device
        self.precision = resolve_precision(config.precision, self.device)  # what the device cannot do is named now
        check_config(config)  # every declared rule and relation, whoever built the config
        self.finish = pixel_finish(config.data)  # the device half of the image transforms
        self.method: Method = (method or build_method)(config)  # options checked now
        self.method_name = type(self.method).registered_name or config.adapt.method
        section = self.method.settings_section
        self.stage = getattr(config, section)  # epochs, iterations, evaluation, BN
        self.train_specs = self.method.train_specs()
        if any(spec is None for spec in self.train_specs):
            raise ConfigError("adaptation needs a target dataset (--target for adapt, --dataset for usl)")
        rule = config.adapt.sampler if section == "adapt" and config.adapt.sampler != "auto" else self.method.sampler
        self.sampler_rule = check_sampler_rule(rule)  # an unknown adapt.sampler is named before any work
        self.batch_size = self.method.batch_size
        self.batch_key = "pretrain.batch_size" if section == "pretrain" else "data.batch_size"
        check_batch_split(config, self.dist.world_size, section, batch_size=self.batch_size, batch_key=self.batch_key)
        self.add_ons = self._build_add_ons(with_add_ons)  # GDS, camera proxies: checked before any work
        self.source_stage = self._source_stage()  # its settings are checked now too
        if self.dist.is_main:
            for folder in (self.run_dir, self.run_dir / "epochs"):
                remove_stale_temporaries(folder)  # left by a kill during a write
        #: How the screen names this run's epochs: "source stage", "adaptation", "training", "pre-training".
        self.stage_name = stage_name or STAGE_NAMES.get(section, section)
        shown = (f"{config.source} -> {config.target}" if config.source and self.method.clusters
                 else ", ".join(self.train_specs))
        self.log = RunLog(self.run_dir, resume=resume, writes=self.dist.is_main,
                          screen=self.stage_name if self.dist.is_main else None, epochs=self.stage.epochs,
                          title=f"{self.run_dir.name}: {self.method_name}, {self.stage_name}, {shown}",
                          tensorboard=config.tensorboard)

    # ------------------------------------------------------------------ set-up
    def _build_add_ons(self, with_add_ons: bool) -> list:
        if not with_add_ons:
            return []
        add_ons = build_add_ons(self.config, self.method)
        if add_ons and not self.method.accepts_add_ons:
            raise ConfigError(f"{add_ons[0].section}: add-ons do not combine with {self.method_name} "
                              f"({self.stage_name}); switch the {add_ons[0].section} section off")
        return add_ons

    def _dataset(self, spec: str) -> ReidDataset:
        dataset = load_dataset(spec, self.data_root, **options_for(spec, self.config.dataset_options))
        for note in dataset.notes:
            self._say(f"note: {note}")
        return self._readable(dataset) if self.config.data.skip_unreadable else dataset  # each file checked once

    def _load(self) -> tuple[ReidDataset | None, list[ReidDataset], ReidDataset | None]:
        """(source, the datasets trained on, the dataset evaluated every ``eval_every`` epochs)."""
        source = self._dataset(self.config.source) if self.config.source and self.method.clusters else None
        trained = [self._dataset(spec) for spec in self.train_specs]
        spec = self.method.evaluation_spec()
        evaluated = trained[self.train_specs.index(spec)] if spec in self.train_specs else (
            self._dataset(spec) if spec else None)
        return source, trained, evaluated

    def _readable(self, dataset: ReidDataset) -> ReidDataset:
        dataset, skipped = readable_dataset(dataset, progress=self.progress)
        for split, paths in skipped.items():
            shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
            message = f"data.skip_unreadable: skipped {len(paths)} unreadable {split} image(s) of {dataset.name}: {shown}"
            self._say(message)
        return dataset

    def _say(self, message: str) -> None:
        """A line for the screen (rank 0) and ``log.txt``."""
        self.log.info(message)
        if self.dist.is_main:
            tqdm.write(message, file=sys.stderr)

    def _source_stage(self) -> "TrainingLoop | None":
        """The supervised source stage still to run (``adapt.source_pretrain_epochs`` > 0 without
        ``model.init``), or None. Its folder ``source_pretrain/`` is finished only once its
        ``summary.json`` is written; a stage stopped before continues from its ``last.pt``."""
        config = self.config
        if config.model.init or config.adapt.source_pretrain_epochs <= 0 or config.source is None:
            return None
        stage_dir = self.run_dir / "source_pretrain"
        if self.dist.broadcast_object((stage_dir / "summary.json").exists()):  # rank 0's view of the run folder
            return None
        resume = self.dist.broadcast_object((stage_dir / "last.pt").exists())
        return TrainingLoop(source_stage_config(config), stage_dir, data_root=self.data_root, resume=resume,
                            progress=self.progress, dist=self.dist, stage_name="source stage", with_add_ons=False)

    def _initial_model_config(self):
        """``model.init``, or the model of the (finished) source stage."""
        config = self.config
        if config.model.init or config.adapt.source_pretrain_epochs <= 0 or config.source is None:
            return config.model
        stage_dir = self.run_dir / "source_pretrain"
        if self.source_stage is not None:
            self._say(f"source stage: supervised training on {config.source}, {config.adapt.source_pretrain_epochs} "
                      f"epochs -> {stage_dir}" + (" (continued)" if self.source_stage.resume else ""))
            self.source_stage.run()
            seed_everything(config.seed)  # adaptation then draws as a run started with --init <stage>/best.pt
        return dataclasses.replace(config.model, init=str(stage_dir / "best.pt"))

    def _build_model(self, num_classes: int) -> tuple[torch.nn.Module, Any]:
        """The network in the run's precision, once this machine is seen to compute it right at the run's
        image size (``precision auto`` falls back to fp32 otherwise; a chosen one is refused)."""
        model_config = self._initial_model_config()
        model, report = self.method.build_model(model_config, num_classes, self.precision.dtype)
        data = self.config.data
        precision, note = checked_precision(self.precision, self.config.precision, model.backbone, data.height,
                                            data.width, batch=self.batch_size // self.dist.world_size, backward=True)
        if note is not None:
            self._say(f"note: {note}")
            self.precision = precision
            model, report = self.method.build_model(model_config, num_classes, precision.dtype)
        return model, report

    # ------------------------------------------------------------------ run
    def run(self) -> dict[str, Any]:
        try:
            return self._run()
        except KeyboardInterrupt as stop:  # Ctrl-C / Stopped: remember where, for the message on screen
            if not getattr(stop, "where", ""):
                stop.where = f" in {self.stage_name} epoch {max(self.epoch_in_progress, 1)} of {self.stage.epochs}"
            raise
        finally:
            self.log.close()

    def _run(self) -> dict[str, Any]:
        config, dist = self.config, self.dist
        seed_everything(config.seed)
        source, trained, evaluated = self._load()
        target_samples = [sample for dataset in trained for sample in dataset.train]
        self.method.check_samples(target_samples)
        check_run_fits(self, source, trained, evaluated, target_samples)  # before any work (memory_check)
        # A dataset without query/gallery (a folder of someone's own images) has no mAP: label-free
        # diagnostics are logged instead, and best.pt is simply the last epoch's model.
        self.labelled = evaluated is not None and bool(evaluated.query) and bool(evaluated.gallery)
        self.resolved_eps: float | None = None
        if not self.labelled and self.method.clusters:
            self._say(f"{trained[0].name} has no query/gallery split: no mAP; each epoch logs label-free diagnostics "
                      f"(outlier share, cluster sizes, change from the previous epoch, intra/inter-cluster distance) "
                      f"and draws clusters_epochNNN.png; best.pt is the last epoch's model")
        source_samples = source.train if source is not None and self.method.uses_source_batches else None
        state = self._resume_state()  # a refused --resume has changed nothing on disk
        if state is not None and state["epoch"] + 1 >= self.stage.epochs and (self.run_dir / "summary.json").exists():
            self.log.info(f"resume: {self.run_dir} already finished its {self.stage.epochs} epochs; nothing to do")
            return json.loads((self.run_dir / "summary.json").read_text())
        if dist.is_main:
            save_config(self.config_as_written, self.run_dir / "config.yaml")

        model, report = self._build_model(self.method.num_classes(target_samples))
        if self.normalization_note is not None:
            self._say(self.normalization_note)
        if report is not None:
            self.log.info(f"initial weights: {report}")
        else:
            self.log.info("initial weights: random (no model.init)")
            if config.model.arch in ("resnet50", "resnet101"):  # the paper recipes' backbones
                self._say(f"warning: {config.model.arch} starts from random weights (no --init); the published "
                          f"numbers of the paper recipes assume ImageNet weights: --init imagenet (or imagenet:PATH)")
        k = self.method.num_instances
        self._say(f"{self.stage_name}: {self.method_name}"
                  + "".join(f" + {add_on.section}" for add_on in self.add_ons)
                  + (f", {config.source} -> {config.target}" if config.source and self.method.clusters
                     else f" on {', '.join(d.name for d in trained)}")
                  + f", {self.stage.epochs} epochs, {self.sampler_rule} batches of {self.batch_size} images"
                  + (f" (K = {k})" if k > 1 else "")
                  + ("" if self.precision.dtype is None else f", backbone in {self.precision.name}"))
        for message in self.method.ignored_settings():
            self._say(f"note: {message}")
        model = self.method.prepare_model(model)
        # bn_groups counts groups of the global batch: each process computes its share of them.
        section = self.method.settings_section
        sync_bn = getattr(self.stage, "sync_bn", False)
        local_groups = bn_groups_per_process(self.stage.bn_groups, dist.world_size, sync_bn=sync_bn, section=section)
        if local_groups > 1:
            model = convert_to_grouped_bn(model, local_groups)
        if (local_groups > 1 or sync_bn) and getattr(unwrap_model(model).backbone, "class_token", False):
            self._say(f"note: {section}.bn_groups / sync_bn act on BatchNorm only: in {config.model.arch} that is the "
                      f"convolution stem (if any) and the neck; LayerNorm normalises each token on its own")
        model.to(self.device)
        switched = apply_speed(model, config.speed, self.device)
        if switched:
            self.log.info(f"device settings: {', '.join(switched)}")
        # DDP when there are several processes; ``network`` is the model inside (state, evaluation).
        model = dist.wrap_model(model, sync_bn=sync_bn, sync_bn_key=f"{section}.sync_bn")
        network = unwrap_model(model)
        if dist.is_distributed:
            statistics = ("the whole batch (SyncBatchNorm)" if sync_bn else
                          f"{self.stage.bn_groups} groups of {self.batch_size // self.stage.bn_groups} images")
            self.log.info(f"{dist.world_size} processes ({dist.backend}): each trains on "
                          f"{self.batch_size // dist.world_size} images of every batch of {self.batch_size}; "
                          f"BatchNorm statistics over {statistics}")
        optimizer = build_optimizer(model, config.optim, fused=wanted(config.speed.fused_optimizer, self.device))
        # Group 1 holds the method's per-epoch heads (classifiers from centroids), empty between epochs.
        optimizer.add_param_group({"params": [], "name": "heads"})
        scheduler = build_scheduler(optimizer, config.optim, self.stage.epochs)
        self.grad_scaler = self.precision.grad_scaler()  # fp16 only; a no-op otherwise
        ctx = AdaptContext(
            config=config,
            model=model,
            device=self.device,
            target_samples=target_samples,
            source_samples=source_samples,
            num_source_classes=source.num_train_ids if source is not None else 0,
            progress=self.progress,
            dist=dist,
        )

        start_epoch, best_map = 0, -1.0
        if state is not None:
            train_state = state["train_state"]
            rng_states = rank_rng_states(train_state, dist.world_size)
            # Into the module inside DDP: a PPLR model re-creates its heads there, outside DDP.
            network.load_state_dict(state["model"] if train_state["model"] is None else train_state["model"])
            optimizer.load_state_dict(train_state["optimizer"])
            scheduler.load_state_dict(train_state["scheduler"])
            if train_state["grad_scaler"]:  # empty: written without fp16
                self.grad_scaler.load_state_dict(train_state["grad_scaler"])
            if train_state["resolved_eps"] is not None:
                self.resolved_eps = config.clustering.eps = train_state["resolved_eps"]
            start_epoch, best_map = state["epoch"] + 1, state["best_mAP"]
            self.log.truncate_after(state["epoch"] + 1)  # rows count epochs from 1
            self.log.info(f"resumed from {self.run_dir / 'last.pt'}: continuing at epoch {start_epoch + 1}")
        self.method.setup(ctx, state["train_state"]["method"] if state else None)
        if state is not None:
            for add_on in self.add_ons:
                add_on.load_state_dict(state["train_state"]["add_ons"].get(add_on.section, {}))
            if rng_states is not None:
                set_rng_state(rng_states[dist.rank], self.device)
            else:
                dist.seed_rank_streams(config.seed + start_epoch)
                self.log.info(f"{self.run_dir / 'last.pt'} was written by {len(state['train_state']['rng'])} process(es), "
                              f"this run has {dist.world_size}: same training, but the random streams (augmentation) "
                              f"were re-seeded, so the draws differ from an uninterrupted run")
        else:
            dist.seed_rank_streams(config.seed)
            if self.method.evaluates_initial_model and self.labelled:
                figures = self._evaluate(network, evaluated)
                best_map = figures["mAP"]
                self.log.append({"epoch": 0, **figures})
                self._save_best(network, -1, best_map)

        for epoch in range(start_epoch, self.stage.epochs):
            self.epoch_in_progress = epoch + 1
            row: dict[str, Any] = {"epoch": epoch + 1}
            started = time.perf_counter()
            ctx.epoch = epoch
            epoch_labels = self._epoch_labels(ctx, network, epoch, row)
            _set_head_parameters(optimizer, self.method.head_parameters())
            set_weight_decay(optimizer, config.optim, epoch, self.stage.epochs)
            row.update(self._train_epoch(ctx, optimizer, epoch, epoch_labels.labels))
            _set_head_parameters(optimizer, [])  # next epoch's heads start afresh; checkpoints stay shape-free
            dist.sync_buffers_from_main(network)  # BN running statistics: rank 0's, as group 0's in one process
            for line in self.method.after_epoch(ctx):
                self.log.info(line)
            for add_on in self.add_ons:
                row.update(add_on.epoch_figures())
            row["lr"] = optimizer.param_groups[0]["lr"]
            scheduler.step()
            self._save_artifacts(network)
            due = self.stage.eval_every > 0 and (epoch + 1) % self.stage.eval_every == 0
            if not self.labelled:
                self._save_best(network, epoch, best_map)  # the label-free rule: the last epoch's model
            elif due or epoch + 1 == self.stage.epochs:
                figures = self._evaluate(network, evaluated)
                row.update(figures)
                if figures["mAP"] > best_map:
                    best_map = figures["mAP"]
                    self._save_best(network, epoch, best_map)
            row["epoch_seconds"] = round(time.perf_counter() - started, 2)
            # The row before the checkpoint: a kill between them redoes the epoch from the previous
            # last.pt, and the resumed run drops the row, so rows and checkpoint always agree.
            self.log.append(row)
            self._save_last(network, optimizer, scheduler, epoch, best_map)

        return self._finish(ctx, network, trained, evaluated, best_map)

    # ------------------------------------------------------------------ pieces
    def _iterations(self, labels: np.ndarray) -> int:
        """Batches in this epoch (see the module's definition of an epoch)."""
        passes = getattr(self.stage, "passes_per_epoch", 0.0)
        if passes > 0:
            return max(1, int(passes * int((labels >= 0).sum()) / self.batch_size))
        if (self.stage.iters_per_epoch or 0) > 0:
            return self.stage.iters_per_epoch
        return batches_per_pass(labels, self.batch_size, self.method.num_instances)

    def _batch_sampler(self, labels, cameras, *, num_batches: int, epoch: int, seed: int):
        """This process's share of the epoch's batches, drawn by the method's rule (``adapt.sampler``)."""
        return build_batch_sampler(
            self.sampler_rule, labels, cameras=cameras, batch_size=self.batch_size,
            num_instances=self.method.num_instances, num_batches=num_batches, seed=seed, epoch=epoch,
            num_replicas=self.dist.world_size, rank=self.dist.rank,
        )

    def _loader(self, samples: list[Sample], sampler, labels=None, transform=None) -> DataLoader:
        """This process's slices of the sampler's global batches. A new loader every epoch
        (:func:`~uda_reid.device.loader_options` says why)."""
        return DataLoader(
            ImageDataset(samples, transform or self.method.train_transform(), labels=labels),
            batch_size=self.batch_size // self.dist.world_size,
            sampler=sampler,
            drop_last=True,
            **loader_options(self.config.data.workers, self.device),
        )

    def _train_epoch(self, ctx: AdaptContext, optimizer, epoch: int, labels: np.ndarray) -> dict[str, float]:
        config = self.config
        if (labels >= 0).sum() == 0:
            self._say(f"warning: epoch {epoch + 1}: no target image has a training label; epoch skipped")
            return {}
        iterations = self._iterations(labels)
        sampler = self._batch_sampler(labels, [s.camid for s in ctx.target_samples], num_batches=iterations, epoch=epoch,
                                      seed=config.seed)
        loader = self._loader(ctx.target_samples, sampler, labels=labels)
        source_loader = None
        if self.method.uses_source_batches:  # the same draws for every epoch's source batches, from seed + 1
            source = ctx.source_samples
            source_sampler = self._batch_sampler([s.pid for s in source], [s.camid for s in source], num_batches=iterations,
                                                 epoch=epoch, seed=config.seed + 1)
            source_loader = iter(self._loader(source, source_sampler))
        ctx.model.train()
        totals: dict[str, float] = {}
        bar = tqdm(loader, desc=f"{self.stage_name} epoch {epoch + 1}/{self.stage.epochs}", disable=not self.progress,
                   leave=False)
        for iteration, target_batch in enumerate(bar):
            # uint8 pixels become normalised, erased float32 on the device (data.transforms.PixelFinish)
            batch = {"target": {**finish_batch(target_batch, self.finish, self.device), "label": target_batch["pid"]}}
            if source_loader is not None:
                batch["source"] = finish_batch(next(source_loader), self.finish, self.device)
            step, losses = step_losses(self.method, self.add_ons, ctx, batch)
            loss = sum(losses.values())
            # The global batch's figures: the mean over ranks of their slices' (equal-size) values.
            names = ["loss", *losses, *step.figures]
            tensors = [v.detach().float() for v in (loss, *losses.values(), *step.figures.values())]
            values = dict(zip(names, self.dist.mean(torch.stack(tensors)).tolist()))
            if not math.isfinite(values["loss"]):  # the same decision on every rank
                named = ", ".join(f"{k} {values[k]:.4g}" for k in losses)
                kept = (f"The last good checkpoint {self.run_dir / 'last.pt'} is kept" if (self.run_dir / "last.pt").exists()
                        else "No checkpoint was written yet")
                raise TrainingDivergedError(
                    f"loss became {values['loss']} at epoch {epoch + 1}, iteration {iteration + 1} ({named}); stopped. "
                    f"{kept}; check the loss settings (temperatures, weights) or try a lower optim.lr"
                )
            apply_step(self.method, self.add_ons, ctx, loss, optimizer, self.grad_scaler)
            for key, value in values.items():
                totals[key] = totals.get(key, 0.0) + value
            bar.set_postfix(loss=f"{values['loss']:.3f}")
        steps = max(1, len(loader))
        return {**{key: round(value / steps, 5) for key, value in totals.items()}, "iterations": len(loader)}

    def _evaluate(self, network, dataset: ReidDataset) -> dict[str, float]:
        return evaluate_model(self.method.evaluation_model(network), dataset, self.config.data, device=self.device,
                              progress=self.progress, dist=self.dist)

    def _finish(self, ctx: AdaptContext, model, trained: list[ReidDataset], evaluated: ReidDataset | None,
                best_map: float) -> dict[str, Any]:
        initial = next((r for r in self.log.rows if r.get("epoch") == 0), None)
        final = next((r for r in self.log.rows if r.get("epoch") == self.stage.epochs), {})  # always evaluated
        last = {k: final[k] for k in ("mAP", "rank1", "rank5", "rank10") if k in final}
        summary = {
            "method": self.method_name,
            "source": self.config.source,
            "target": evaluated.name if evaluated is not None else trained[0].name,
            "epochs": self.stage.epochs,
            "initial": {k: v for k, v in initial.items() if k != "epoch"} if initial else {},
            "last": last,
            "best_mAP": best_map if self.labelled else None,
        }
        if not self.labelled and self.method.clusters:  # the last epoch's label-free figures stand in for mAP
            summary["diagnostics"] = {k: v for k, v in final.items()
                                      if k in ("clusters", "outliers", "outlier_share", "cluster_size_median",
                                               "ari_previous", "nmi_previous", "intra_distance", "inter_distance")}
        if not self.labelled and not self.method.clusters:  # e.g. pre-training without --eval-on: its losses
            summary["last"] = {k: v for k, v in final.items() if k.startswith("loss")}
        evaluation_spec = self.method.evaluation_spec()
        for name in self.config.eval_datasets:
            if name == evaluation_spec:  # evaluated every eval_every epochs already
                continue
            other = self._dataset(name)
            summary.setdefault("also_evaluated", {})[other.name] = self._evaluate(model, other)
        shown = {evaluated.name: last} if evaluated is not None else {}
        for name, figures in {**shown, **summary.get("also_evaluated", {})}.items():
            self.log.info(f"final {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in figures.items()))
        summary.update(self.method.summary(self.run_dir))
        if self.dist.is_main:
            for add_on in self.add_ons:
                add_on.finish(model, evaluated, self.run_dir, ctx)
        if self.dist.is_main:  # last: its presence says the run is complete
            atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        self.dist.barrier()
        return summary


def step_losses(method: Method, add_ons: list, ctx: AdaptContext, batch: dict) -> tuple[StepOutput, dict[str, torch.Tensor]]:
    """One training step's forward: the method's losses, then each add-on's on the same features."""
    step = method.training_step(ctx, batch)
    losses = dict(step.losses)
    for add_on in add_ons:
        losses.update(add_on.loss(step, batch, ctx))
    return step, losses


def apply_step(method: Method, add_ons: list, ctx: AdaptContext, loss: torch.Tensor, optimizer, grad_scaler) -> None:
    """Backward (DDP exchanges the model's gradients), gradient exchange of the heads DDP does not own,
    optimiser step, memory updates."""
    optimizer.zero_grad(set_to_none=True)
    grad_scaler.scale(loss).backward()
    ctx.dist.average_gradients(method.head_parameters())  # heads live outside DDP
    if ctx.config.optim.clip_grad_per_parameter > 0:
        grad_scaler.unscale_(optimizer)  # clip the true gradients (a no-op without fp16)
        clip_gradients((p for group in optimizer.param_groups for p in group["params"]),
                       ctx.config.optim.clip_grad_per_parameter)
    method.before_optimizer_step(ctx)
    grad_scaler.step(optimizer)  # skipped (fp16) when a gradient overflowed
    grad_scaler.update()
    method.after_step(ctx)
    for add_on in add_ons:
        add_on.after_step(ctx)


def _set_head_parameters(optimizer: torch.optim.Optimizer, parameters: list[torch.nn.Parameter]) -> None:
    """Put ``parameters`` in the optimiser's heads group, forgetting the state of the previous ones."""
    group = next(g for g in optimizer.param_groups if g.get("name") == "heads")
    for old in group["params"]:
        optimizer.state.pop(old, None)
    group["params"] = list(parameters)


def adapt(config: RunConfig, run_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Run (or with ``resume=True`` continue) an adaptation or USL run; see :class:`TrainingLoop`.

    Under torchrun, call it on every process (``dist=`` the context from ``init_distributed``).
    """
    return TrainingLoop(config, run_dir, **kwargs).run()


def train_supervised(config: RunConfig, run_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Supervised training on ``config.dataset`` (``udareid train``), on the same loop."""
    return TrainingLoop(supervised_config(config), run_dir, **kwargs).run()
