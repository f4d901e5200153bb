"""The one training loop: ``udareid train``, the UDA source stage, ``udareid adapt`` and ``usl``.

Per epoch: the training labels (the person ids for supervised training; else the target features,
from the method or extracted, -> clustering stage -> the method's labels) -> one epoch of training
steps with the method's losses -> evaluation every ``eval_every`` epochs -> the epoch's row in
``metrics.jsonl`` -> ``last.pt``. The first row (epoch 0) evaluates the initial model, the
direct-transfer figure adaptation is measured against (supervised training from scratch skips it).

An **epoch** is ``iters_per_epoch`` batches of the method's settings section (``train`` for
supervised training, ``adapt`` otherwise), or with ``iters_per_epoch: 0`` as many batches as one
pass over the labelled identities takes at K images each (``adapt.passes_per_epoch`` > 0: that
many passes over the labelled images instead).

The loop knows no method by name: everything method-specific goes through ``methods.base.Method``;
supervised training is the method ``supervised`` (``methods.supervised``).

Under torchrun (``engine.distributed``) every process runs this loop: features are extracted in
shares and gathered, rank 0 clusters and every rank receives its result, each rank trains on its
slice of the same global batches with a DDP model, and only rank 0 writes files.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..addons import build_add_ons
from ..clustering import CLUSTERERS, KNN_BACKENDS, ClusterResult, cluster_stage
from ..clustering.diagnostics import cluster_diagnostics
from ..clustering.eps import data_derived_eps
from ..clustering.jaccard import jaccard_distance
from ..evaluation.cluster_grid import save_cluster_grid
from ..config import RunConfig, save_config, update_dataclass
from ..data.datasets import ReidDataset, Sample, load_dataset, options_for
from ..data.image_dataset import ImageDataset, readable_dataset
from ..data.samplers import batches_per_pass, build_batch_sampler, check_sampler_rule
from ..data.transforms import build_train_transform
from ..errors import ConfigError, TrainingDivergedError
from ..evaluation.protocol import evaluate_model
from ..fileio import atomic_write_text, remove_stale_temporaries
from ..methods import AdaptContext, EpochLabels, Method, StepOutput, build_method
from ..models.batchnorm import convert_to_grouped_bn
from ..models.backbones import BACKBONES
from ..models.factory import build_model
from ..models.necks import POOLINGS
from ..models.checkpoints import load_checkpoint, save_checkpoint
from ..device import loader_workers
from ..precision import resolve_precision
from ..distributed import DistributedContext, bn_groups_per_process, init_distributed, unwrap_model
from .epoch_records import epoch_record_path, plot_score_distributions, save_epoch_record
from ..models.features import extract_features
from .optim import build_optimizer, build_scheduler
from .run_log import RunLog
from .seeding import rng_state, seed_everything, set_rng_state


def check_registered_choices(config: RunConfig) -> None:
    """The keys whose values are names in a registry, named with the valid ones before any work
    (numeric ranges and fixed word lists are checked where the config is set: ``config.LIMITS``)."""
    checks = [
        ("clustering.clusterer", config.clustering.clusterer, CLUSTERERS.names()),
        ("clustering.knn", config.clustering.knn, ["auto", *KNN_BACKENDS.names()]),
        ("model.arch", config.model.arch, BACKBONES.names()),
        ("model.pooling", config.model.pooling, POOLINGS.names()),
    ]
    for key, value, valid in checks:
        if value not in valid:
            raise ConfigError(f"{key}: unknown value {value!r}; choose one of: {', '.join(valid)}")


def clusterer_options(config: RunConfig) -> dict[str, Any]:
    """The ``clustering`` settings the chosen clusterer takes."""
    c = config.clustering
    if c.clusterer == "dbscan":
        return {"eps": c.eps, "min_samples": c.min_samples}
    if c.clusterer == "hdbscan":
        return {"min_cluster_size": c.min_cluster_size, "min_samples": c.min_samples}
    if c.clusterer == "kmeans":  # k estimated, when not given, by the run's own density settings
        return {"n_clusters": c.n_clusters or None, "seed": config.seed, "estimate_eps": c.eps,
                "estimate_min_samples": c.min_samples, "estimate_k1": c.k1, "estimate_k2": c.k2}
    return {}


class TrainingLoop:
    """One training run in ``run_dir``; ``run()`` returns the summary (also ``summary.json``).

    ``dist``: this process's place in a torchrun run (``engine.distributed``); by default it is read
    from the environment (a single process without torchrun). ``resume``: continue from
    ``last.pt`` (or, when a UDA run was stopped in its source stage, from that stage's).
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
    ) -> None:
        if config.target is None:
            raise ConfigError("adaptation needs a target dataset (--target for adapt, --dataset for usl)")
        # The run's own copy: clustering.eps "auto" becomes the value derived from the data in it, while
        # the config as written is what config.yaml and the checkpoints hold and --resume compares with.
        self.config_as_written = config
        self.config = config = copy.deepcopy(config)
        self.run_dir = Path(run_dir)
        self.data_root = data_root
        self.resume = resume
        self.dist = dist if dist is not None else init_distributed(config.device)
        self.progress = progress and self.dist.is_main
        self.device = self.dist.device
        self.precision = resolve_precision(config.precision, self.device)  # what the device cannot do is named now
        check_registered_choices(config)
        self.method: Method = build_method(config)  # checks method and options before any work
        self.stage = getattr(config, self.method.settings_section)  # epochs, iterations, evaluation, BN
        rule = config.adapt.sampler if config.adapt.sampler != "auto" else self.method.sampler
        self.sampler_rule = check_sampler_rule(rule)  # an unknown adapt.sampler is named before any work
        update_dataclass(config.optim, config.adapt.source_optim, "adapt.source_optim")  # named before any work
        check_batch_split(config, self.dist.world_size, self.method.settings_section)
        self.add_ons = build_add_ons(config, self.method)  # GDS, camera proxies: checked before any work
        self.source_stage = self._source_stage()  # its settings are checked now too
        if self.dist.is_main:
            for folder in (self.run_dir, self.run_dir / "epochs"):
                remove_stale_temporaries(folder)  # left by a kill during a write
        #: How the screen names this run's epochs: "source stage", "adaptation", "training".
        self.stage_name = stage_name or ("training" if not self.method.clusters else "adaptation")
        datasets = f"{config.source} -> {config.target}" if config.source and self.method.clusters else config.target
        self.log = RunLog(self.run_dir, resume=resume, writes=self.dist.is_main,
                          screen=self.stage_name if self.dist.is_main else None, epochs=self.stage.epochs,
                          title=f"{self.run_dir.name}: {config.adapt.method}, {self.stage_name}, {datasets}")

    # ------------------------------------------------------------------ set-up
    def _load(self) -> tuple[ReidDataset | None, ReidDataset]:
        options = self.config.dataset_options
        source = (load_dataset(self.config.source, self.data_root, **options_for(self.config.source, options))
                  if self.config.source else None)
        target = load_dataset(self.config.target, self.data_root, **options_for(self.config.target, options))
        if self.config.data.skip_unreadable:  # every split, each file checked once here
            source = self._readable(source) if source is not None else None
            target = self._readable(target)
        return source, target

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
                            progress=self.progress, dist=self.dist, stage_name="source stage")

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

    def _resume_state(self) -> dict[str, Any] | None:
        """``last.pt``'s content when resuming a run that wrote one (a UDA run stopped in its source
        stage has none yet: it then starts its adaptation afresh)."""
        if not self.resume:
            return None
        path = self.run_dir / "last.pt"
        if not self.dist.broadcast_object(path.exists()):
            self.log.truncate_after(-1)  # rows written before the first checkpoint are redone
            return None
        return load_checkpoint(path, expect_config=self.config)

    # ------------------------------------------------------------------ run
    def run(self) -> dict[str, Any]:
        config, dist = self.config, self.dist
        seed_everything(config.seed)
        if dist.is_main:
            save_config(config, self.run_dir / "config.yaml")
        source, target = self._load()
        # A target without query/gallery (a folder of someone's own images) has no mAP: label-free
        # diagnostics are logged instead, and best.pt is simply the last epoch's model.
        self.labelled = bool(target.query) and bool(target.gallery)
        self.resolved_eps: float | None = None
        if not self.labelled:
            self._say(f"{target.name} has no query/gallery split: no mAP; each epoch logs label-free diagnostics "
                      f"(outlier share, cluster sizes, change from the previous epoch, intra/inter-cluster distance) "
                      f"and draws clusters_epochNNN.png; best.pt is the last epoch's model")
        target_samples = target.train
        source_samples = source.train if source is not None and self.method.uses_source_batches else None
        state = self._resume_state()
        if state is not None and state["epoch"] + 1 >= self.stage.epochs and (self.run_dir / "summary.json").exists():
            self.log.info(f"resume: {self.run_dir} already finished its {self.stage.epochs} epochs; nothing to do")
            return json.loads((self.run_dir / "summary.json").read_text())

        model, report = build_model(self._initial_model_config(), num_classes=self.method.num_classes(target_samples))
        if report is not None:
            self.log.info(f"initial weights: {report}")
        else:
            self.log.info("initial weights: random (no model.init)")
            if config.model.arch in ("resnet50", "resnet101"):  # the paper recipes' backbones
                self._say(f"warning: {config.model.arch} starts from random weights (no --init); the published "
                          f"numbers of the paper recipes assume ImageNet weights: --init imagenet (or imagenet:PATH)")
        self._say(f"{self.stage_name}: {config.adapt.method}"
                  + "".join(f" + {add_on.section}" for add_on in self.add_ons)
                  + (f", {config.source} -> {target.name}" if config.source and self.method.clusters else f" on {target.name}")
                  + f", {self.stage.epochs} epochs, {self.sampler_rule} batches of {config.data.batch_size} images "
                  f"(K = {config.data.num_instances})"
                  + ("" if self.precision.dtype is None else f", backbone in {self.precision.name}"))
        for message in self.method.ignored_settings():
            self._say(f"note: {message}")
        model = self.method.prepare_model(model)
        model.compute_dtype = self.precision.dtype  # the backbone's autocast; the rest stays float32
        # bn_groups counts groups of the global batch: each process computes its share of them.
        section = self.method.settings_section
        local_groups = bn_groups_per_process(self.stage.bn_groups, dist.world_size, sync_bn=self.stage.sync_bn,
                                             section=section)
        if local_groups > 1:
            model = convert_to_grouped_bn(model, local_groups)
        model.to(self.device)
        # DDP when there are several processes; ``network`` is the model inside (state, evaluation).
        model = dist.wrap_model(model, sync_bn=self.stage.sync_bn, sync_bn_key=f"{section}.sync_bn")
        network = unwrap_model(model)
        if dist.is_distributed:
            statistics = ("the whole batch (SyncBatchNorm)" if self.stage.sync_bn else
                          f"{self.stage.bn_groups} groups of {config.data.batch_size // self.stage.bn_groups} images")
            self.log.info(f"{dist.world_size} processes ({dist.backend}): each trains on "
                          f"{config.data.batch_size // dist.world_size} images of every batch of {config.data.batch_size}; "
                          f"BatchNorm statistics over {statistics}")
        optimizer = build_optimizer(model, config.optim)
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
            rng_states = rank_rng_states(state["train_state"], dist.world_size)
            # Into the module inside DDP: a PPLR model re-creates its heads there, outside DDP.
            trained = state["train_state"]["model"]
            network.load_state_dict(state["model"] if trained is None else trained)
            optimizer.load_state_dict(state["train_state"]["optimizer"])
            scheduler.load_state_dict(state["train_state"]["scheduler"])
            if state["train_state"].get("grad_scaler"):  # absent: written without fp16
                self.grad_scaler.load_state_dict(state["train_state"]["grad_scaler"])
            if state["train_state"].get("resolved_eps") is not None:
                self.resolved_eps = state["train_state"]["resolved_eps"]
                config.clustering.eps = self.resolved_eps
            start_epoch, best_map = state["epoch"] + 1, state["best_mAP"]
            self.log.truncate_after(state["epoch"] + 1)  # rows count epochs from 1
            self.log.info(f"resumed from {self.run_dir / 'last.pt'}: continuing at epoch {start_epoch + 1}")
        self.method.setup(ctx, state["train_state"]["method"] if state else None)
        if state is not None:
            saved = state["train_state"].get("add_ons", {"gds": state["train_state"].get("gds", {})})
            for add_on in self.add_ons:
                add_on.load_state_dict(saved.get(add_on.section, {}))
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
                figures = self._evaluate(network, target)
                best_map = figures["mAP"]
                self.log.append({"epoch": 0, **figures})
                self._save_best(network, -1, best_map)

        for epoch in range(start_epoch, self.stage.epochs):
            row: dict[str, Any] = {"epoch": epoch + 1}
            started = time.perf_counter()
            ctx.epoch = epoch
            epoch_labels = self._epoch_labels(ctx, network, epoch, row)
            _set_head_parameters(optimizer, self.method.head_parameters())
            row.update(self._train_epoch(ctx, optimizer, epoch, epoch_labels.labels))
            _set_head_parameters(optimizer, [])  # next epoch's heads start afresh; checkpoints stay shape-free
            dist.sync_buffers_from_main(network)  # BN running statistics: rank 0's, as group 0's in one process
            for add_on in self.add_ons:
                row.update(add_on.epoch_figures())
            row["lr"] = optimizer.param_groups[0]["lr"]
            scheduler.step()
            due = self.stage.eval_every > 0 and (epoch + 1) % self.stage.eval_every == 0
            if not self.labelled:
                self._save_best(network, epoch, best_map)  # the label-free rule: the last epoch's model
            elif due or epoch + 1 == self.stage.epochs:
                figures = self._evaluate(network, target)
                row.update(figures)
                if figures["mAP"] > best_map:
                    best_map = figures["mAP"]
                    self._save_best(network, epoch, best_map)
            row["epoch_seconds"] = round(time.perf_counter() - started, 2)
            # The row before the checkpoint: a kill between them redoes the epoch from the previous
            # last.pt, and the resumed run drops the row, so rows and checkpoint always agree.
            self.log.append(row)
            self._save_last(network, optimizer, scheduler, epoch, best_map)

        return self._finish(ctx, network, target, best_map)

    # ------------------------------------------------------------------ pieces
    def _epoch_labels(self, ctx: AdaptContext, network, epoch: int, row: dict[str, Any]) -> EpochLabels:
        """This epoch's training labels: the clustering stage and the method's refinement of it, or
        (supervised training) the samples' own person ids."""
        config, dist = self.config, self.dist
        features = None
        if self.method.clusters or any(add_on.needs_features for add_on in self.add_ons):
            features = self.method.target_features(ctx)
            if features is None:
                features = extract_features(network, ctx.target_samples, config.data, device=self.device,
                                            progress=self.progress, desc="target features", dist=dist)
        if not self.method.clusters:
            result = ground_truth_clusters(ctx.target_samples)
            epoch_labels = self.method.on_clusters(result, features, ctx)
            row.update(self._add_ons_on_clusters(result, epoch_labels, features, ctx))
            return epoch_labels
        if config.clustering.eps == "auto":  # derived once, at the first clustering, and kept (METHODS.md §9)
            self.resolved_eps = dist.on_main(self._data_derived_eps, features)
            config.clustering.eps = self.resolved_eps
            self._say(f"clustering.eps auto: {self.resolved_eps:.4f}, the mean of the smallest "
                      f"{config.clustering.eps_rho:g} of the pairwise Jaccard distances (kept from now on)")
        if self.resolved_eps is not None:
            row["eps"] = round(self.resolved_eps, 5)
        # Once, on rank 0; every rank gets the same result and refines it identically.
        result = dist.on_main(
            cluster_stage,
            features,
            clusterer=config.clustering.clusterer,
            clusterer_options=clusterer_options(config),
            k1=config.clustering.k1,
            k2=config.clustering.k2,
            knn=config.clustering.knn,
            max_distance=self.method.cluster_max_distance(),
        )
        row.update(clusters=result.num_clusters, outliers=result.num_outliers,
                   cluster_seconds=round(sum(result.timings.values()), 3))
        if result.num_clusters == 0:
            self._say(f"warning: epoch {epoch + 1}: every target image is an outlier (check clustering.eps / min_samples)")
        elif result.num_clusters == 1 and result.num_outliers == 0:
            self._say(f"warning: epoch {epoch + 1}: all target images fell into one cluster (clustering.eps "
                      f"{config.clustering.eps} is too loose for these features?)")
        epoch_labels = self.method.on_clusters(result, features, ctx)
        if dist.is_distributed:
            checksum = dist.check_identical(
                f"the pseudo-labels and clustered features of epoch {epoch + 1}",
                result.labels, epoch_labels.labels, features,
            )
            self.log.info(f"epoch {epoch + 1}: pseudo-labels identical on all {dist.world_size} processes "
                          f"(checksum {checksum})")
        row.update(epoch_labels.figures)
        row.update(self._add_ons_on_clusters(result, epoch_labels, features, ctx))
        if dist.is_main:
            row.update(cluster_diagnostics(result.labels, features, self._previous_cluster_labels(epoch)))
            save_epoch_record(self.run_dir, epoch + 1, cluster_labels=result.labels,
                              training_labels=epoch_labels.labels, scores=epoch_labels.scores)
            if epoch_labels.scores:
                plot_score_distributions(self.run_dir)
            if not self.labelled:
                save_cluster_grid(ctx.target_samples, result.labels, self.run_dir / f"clusters_epoch{epoch + 1:03d}.png",
                                  seed=self.config.seed + epoch,
                                  title=f"{self.run_dir.name}: epoch {epoch + 1}, {result.num_clusters} clusters "
                                        f"({result.num_outliers} outliers); sampled clusters, one per row")
        return epoch_labels

    def _data_derived_eps(self, features: torch.Tensor) -> float:
        """Song et al.'s eps from the whole sparse Jaccard distance of ``features``."""
        c = self.config.clustering
        return data_derived_eps(jaccard_distance(features, k1=c.k1, k2=c.k2, knn=c.knn), c.eps_rho)

    def _previous_cluster_labels(self, epoch: int) -> np.ndarray | None:
        """The clustering of the previous epoch, from its saved record (also after --resume)."""
        path = epoch_record_path(self.run_dir, epoch)  # records count epochs from 1: this is epoch - 1's
        if epoch == 0 or not path.exists():
            return None
        with np.load(path) as record:
            return record["cluster_labels"]

    def _add_ons_on_clusters(self, result: ClusterResult, epoch_labels: EpochLabels, features, ctx) -> dict[str, float]:
        """Every add-on rebuilds its per-epoch state from the clustering; returns their figures."""
        spaces = epoch_labels.spaces if epoch_labels.spaces is not None else [features]
        figures: dict[str, float] = {}
        for add_on in self.add_ons:
            figures.update(add_on.on_clusters(result.labels, spaces, ctx))
        return figures

    def _iterations(self, labels: np.ndarray) -> int:
        """Batches in this epoch (see the module's definition of an epoch)."""
        data = self.config.data
        passes = getattr(self.stage, "passes_per_epoch", 0.0)
        if passes > 0:
            return max(1, int(passes * int((labels >= 0).sum()) / data.batch_size))
        if self.stage.iters_per_epoch > 0:
            return self.stage.iters_per_epoch
        return batches_per_pass(labels, data.batch_size, data.num_instances)

    def _batch_sampler(self, labels, cameras, *, num_batches: int, epoch: int, seed: int):
        """This process's share of the epoch's batches, drawn by the method's rule (``adapt.sampler``)."""
        return build_batch_sampler(
            self.sampler_rule, labels, cameras=cameras, batch_size=self.config.data.batch_size,
            num_instances=self.config.data.num_instances, num_batches=num_batches, seed=seed, epoch=epoch,
            num_replicas=self.dist.world_size, rank=self.dist.rank,
        )

    def _loader(self, samples: list[Sample], sampler, labels=None) -> DataLoader:
        """This process's slices of the sampler's global batches. A new loader every epoch: its
        workers are seeded from the main process's random state, which checkpoints keep, so a
        resumed run draws the same augmentations (persistent workers would not)."""
        return DataLoader(
            ImageDataset(samples, build_train_transform(self.config.data), labels=labels),
            batch_size=self.config.data.batch_size // self.dist.world_size,
            sampler=sampler,
            num_workers=loader_workers(self.config.data.workers),
            drop_last=True,
            pin_memory=self.device.type == "cuda",
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
            batch = {"target": {**target_batch, "label": target_batch["pid"]}}
            if source_loader is not None:
                batch["source"] = next(source_loader)
            step, losses = step_losses(self.method, self.add_ons, ctx, batch)
            loss = sum(losses.values())
            # The global batch's figures: the mean over ranks of their slices' (equal-size) values.
            names = ["loss", *losses, *step.figures]
            tensors = [v.detach().float() for v in (loss, *losses.values(), *step.figures.values())]
            values = dict(zip(names, self.dist.mean(torch.stack(tensors)).tolist()))
            if not math.isfinite(values["loss"]):  # the same decision on every rank
                named = ", ".join(f"{k} {values[k]:.4g}" for k in losses)
                raise TrainingDivergedError(
                    f"loss became {values['loss']} at epoch {epoch + 1}, iteration {iteration + 1} ({named}); stopped. "
                    f"The last good checkpoint {self.run_dir / 'last.pt'} is kept; try a lower optim.lr"
                )
            apply_step(self.method, self.add_ons, ctx, loss, optimizer, self.grad_scaler)
            for key, value in values.items():
                totals[key] = totals.get(key, 0.0) + value
            bar.set_postfix(loss=f"{values['loss']:.3f}")
        steps = max(1, len(loader))
        return {**{key: round(value / steps, 5) for key, value in totals.items()}, "iterations": len(loader)}

    def _evaluate(self, network, target: ReidDataset) -> dict[str, float]:
        return evaluate_model(network, target, self.config.data, device=self.device, progress=self.progress,
                              dist=self.dist)

    def _exported(self, network) -> dict[str, torch.Tensor]:
        """The plain ``ReidModel`` weights (what evaluate / --init read)."""
        return self.method.export_state_dict(network)

    def _save_best(self, network, epoch: int, best_map: float) -> None:
        """``best.pt``: the exported model only (it is never resumed from)."""
        if self.dist.is_main:
            model = self._exported(network)
            save_checkpoint(self.run_dir / "best.pt", self.config_as_written, epoch, model=model,
                            num_classes=_classifier_size(model), best_mAP=best_map)
        self.dist.barrier()  # nobody reads a checkpoint before it is complete

    def _save_last(self, network, optimizer, scheduler, epoch: int, best_map: float) -> None:
        """``last.pt``: the exported model and everything a resumed run needs to continue exactly.
        Rank 0 writes (every rank calls: the random states of all ranks are gathered)."""
        rng_states = self.dist.all_gather_object(rng_state(self.device))
        if self.dist.is_main:
            model = self._exported(network)
            trained = network.state_dict()
            save_checkpoint(
                self.run_dir / "last.pt",
                self.config_as_written,
                epoch,
                model=model,
                num_classes=_classifier_size(model),
                best_mAP=best_map,
                train_state={
                    # None: the trained model is the exported one (stored once)
                    "model": None if _same_tensors(model, trained) else trained,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "method": self.method.state_dict(),
                    "add_ons": {add_on.section: add_on.state_dict() for add_on in self.add_ons},
                    "rng": rng_states,  # one per rank, in rank order
                    "grad_scaler": self.grad_scaler.state_dict(),  # empty unless fp16
                    "resolved_eps": self.resolved_eps,  # clustering.eps auto: the value derived at the first clustering
                },
            )
        self.dist.barrier()

    def _finish(self, ctx: AdaptContext, model, target: ReidDataset, best_map: float) -> dict[str, Any]:
        initial = next((r for r in self.log.rows if r.get("epoch") == 0), None)
        final = next((r for r in self.log.rows if r.get("epoch") == self.stage.epochs), {})  # always evaluated
        last = {k: final[k] for k in ("mAP", "rank1", "rank5", "rank10") if k in final}
        summary = {
            "method": self.config.adapt.method,
            "source": self.config.source,
            "target": target.name,
            "epochs": self.stage.epochs,
            "initial": {k: v for k, v in initial.items() if k != "epoch"} if initial else {},
            "last": last,
            "best_mAP": best_map if self.labelled else None,
        }
        if not self.labelled:  # the last epoch's label-free figures stand in for mAP
            summary["diagnostics"] = {k: v for k, v in final.items()
                                      if k in ("clusters", "outliers", "outlier_share", "cluster_size_median",
                                               "ari_previous", "nmi_previous", "intra_distance", "inter_distance")}
        for name in self.config.eval_datasets:
            other = load_dataset(name, self.data_root, **options_for(name, self.config.dataset_options))
            other = self._readable(other) if self.config.data.skip_unreadable else other
            summary.setdefault("also_evaluated", {})[other.name] = self._evaluate(model, other)
        for name, figures in {target.name: last, **summary.get("also_evaluated", {})}.items():
            self.log.info(f"final {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in figures.items()))
        if self.dist.is_main:
            for add_on in self.add_ons:
                add_on.finish(model, target, self.run_dir, ctx)
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
    """Backward, gradient exchange of the heads DDP does not own, optimiser step, memory updates."""
    optimizer.zero_grad(set_to_none=True)
    grad_scaler.scale(loss).backward()
    ctx.dist.average_gradients(method.head_parameters())  # heads live outside DDP
    grad_scaler.step(optimizer)  # skipped (fp16) when a gradient overflowed
    grad_scaler.update()
    method.after_step(ctx)
    for add_on in add_ons:
        add_on.after_step(ctx)


def ground_truth_clusters(samples: list[Sample]) -> ClusterResult:
    """The "clustering" of supervised training: every sample's own person id."""
    labels = np.asarray([s.pid for s in samples], dtype=np.int64)
    return ClusterResult(labels=labels, num_clusters=len(np.unique(labels[labels >= 0])),
                         num_outliers=int((labels < 0).sum()))


def _classifier_size(state: dict[str, torch.Tensor]) -> int:
    weight = state.get("classifier.weight")
    return 0 if weight is None else int(weight.shape[0])


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k] is b[k] or torch.equal(a[k], b[k]) for k in a)


def supervised_config(config: RunConfig) -> RunConfig:
    """``config`` as a supervised run on ``config.dataset`` (``udareid train``): the method
    ``supervised`` with the ``train`` settings, evaluated on the same dataset."""
    return dataclasses.replace(
        config,
        source=None,
        target=config.dataset,
        adapt=dataclasses.replace(config.adapt, method="supervised", sampler="auto", source_pretrain_epochs=0),
        method_options={},
    )


def source_stage_config(config: RunConfig) -> RunConfig:
    """The supervised source stage of a UDA run: ``train`` settings on the source, ``optim`` with
    ``adapt.source_optim``, no add-on terms."""
    return supervised_config(dataclasses.replace(
        config,
        dataset=config.source,
        eval_datasets=[],
        optim=update_dataclass(config.optim, config.adapt.source_optim, "adapt.source_optim"),
        train=dataclasses.replace(config.train, epochs=config.adapt.source_pretrain_epochs),
        gds=dataclasses.replace(config.gds, enabled=False, hard_mining=False),
        camera_proxies=dataclasses.replace(config.camera_proxies, mode="off"),
    ))


def check_batch_split(config: RunConfig, world_size: int, section: str = "adapt") -> None:
    """Refuse batch and BatchNorm settings the processes cannot split (equal slices of each batch,
    BatchNorm groups that are equal parts of the batch and a multiple of the processes).
    ``section``: where the BatchNorm settings are (``adapt`` or ``train``)."""
    data, adapt_config = config.data, getattr(config, section)
    if data.num_instances < 1 or data.batch_size < 1 or data.batch_size % world_size:
        raise ConfigError(
            f"data.batch_size ({data.batch_size}) must be a positive multiple of the number of processes "
            f"({world_size}) and data.num_instances ({data.num_instances}) positive, so that every process "
            f"gets an equal share of each batch; change data.batch_size or the number of processes"
        )
    bn_groups_per_process(adapt_config.bn_groups, world_size, sync_bn=adapt_config.sync_bn, section=section)
    if data.batch_size % adapt_config.bn_groups:
        raise ConfigError(
            f"{section}.bn_groups ({adapt_config.bn_groups}) must divide data.batch_size ({data.batch_size}): "
            f"BatchNorm groups are equal parts of the batch"
        )


def rank_rng_states(train_state: dict[str, Any], world_size: int) -> list[dict[str, Any]] | None:
    """The random states a checkpoint saved, one per rank, or None when another number of processes wrote it.

    The number of processes is not part of the training (``bn_groups`` counts groups of the global
    batch), so a run may resume on another number of GPUs; only the random streams (augmentation
    draws) cannot be carried over then. Checkpoints written before the states were kept per rank
    hold one dict.
    """
    states = train_state["rng"]
    states = [states] if isinstance(states, dict) else list(states)
    return states if len(states) == world_size else None


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
