"""The alternating cluster -> adapt loop behind ``udareid adapt`` and ``udareid usl``.

Per epoch: target features (from the method, or extracted) -> clustering stage -> the method's
labels -> ``adapt.iters_per_epoch`` training steps with the method's losses -> evaluation every
``adapt.eval_every`` epochs -> checkpoints and logs. The first row of ``metrics.jsonl`` (epoch 0)
evaluates the initial model: the direct-transfer figure adaptation is measured against.

The loop knows no method by name: everything method-specific goes through ``methods.base.Method``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..clustering import cluster_stage
from ..config import RunConfig, save_config, update_dataclass
from ..data.datasets import ReidDataset, Sample, load_dataset
from ..data.image_dataset import ImageDataset, readable_samples
from ..data.samplers import IdentitySampler
from ..data.transforms import build_train_transform
from ..errors import ConfigError
from ..evaluation.distances import dataset_histograms, save_histograms
from ..evaluation.protocol import evaluate_model
from ..fileio import atomic_write_text
from ..losses.gds import GlobalDistanceSeparation
from ..methods import AdaptContext, Method, build_method
from ..models.batchnorm import convert_to_grouped_bn
from ..models.factory import build_model
from .checkpoints import load_checkpoint, save_checkpoint
from .device import resolve_device
from .epoch_records import plot_score_distributions, save_epoch_record
from .features import extract_features
from .optim import build_optimizer, build_scheduler
from .run_log import RunLog
from .seeding import seed_everything
from .supervised import TrainingDivergedError, train_supervised


def clusterer_options(config: RunConfig) -> dict[str, Any]:
    """The ``clustering`` settings the chosen clusterer takes."""
    c = config.clustering
    if c.clusterer == "dbscan":
        return {"eps": c.eps, "min_samples": c.min_samples}
    if c.clusterer == "hdbscan":
        return {"min_cluster_size": c.min_cluster_size, "min_samples": c.min_samples}
    if c.clusterer == "kmeans":
        return {"n_clusters": c.n_clusters or None, "seed": config.seed}
    return {}


def _iterate_forever(loader: DataLoader, sampler: IdentitySampler, first_pass: int) -> Iterator[dict]:
    """Batches without end; pass ``p`` over the sampler draws with ``set_epoch(p)``.

    One pass is one epoch of iterations, so a resumed run starts at the pass of its epoch.
    """
    passes = first_pass
    while True:
        sampler.set_epoch(passes)
        passes += 1
        yield from loader


class AdaptationLoop:
    """One adaptation run in ``run_dir``; ``run()`` returns the summary (also ``summary.json``)."""

    def __init__(
        self,
        config: RunConfig,
        run_dir: str | Path,
        *,
        data_root: str | Path | None = None,
        resume: bool = False,
        progress: bool = True,
    ) -> None:
        if config.target is None:
            raise ConfigError("adaptation needs a target dataset (--target for adapt, --dataset for usl)")
        self.config = config
        self.run_dir = Path(run_dir)
        self.data_root = data_root
        self.resume = resume
        self.progress = progress
        self.device = resolve_device(config.device)
        self.method: Method = build_method(config)  # checks method and options before any work
        update_dataclass(config.optim, config.adapt.source_optim, "adapt.source_optim")  # named before any work
        gds_on = config.gds.enabled or config.gds.hard_mining
        self.gds = GlobalDistanceSeparation(config.gds).to(self.device) if gds_on else None
        self.log = RunLog(self.run_dir, resume=resume)

    # ------------------------------------------------------------------ set-up
    def _load(self) -> tuple[ReidDataset | None, ReidDataset]:
        source = load_dataset(self.config.source, self.data_root) if self.config.source else None
        target = load_dataset(self.config.target, self.data_root)
        return source, target

    def _samples(self, samples: list[Sample]) -> list[Sample]:
        return readable_samples(samples, progress=self.progress) if self.config.data.skip_unreadable else samples

    def _initial_model_config(self):
        """``model.init``, or the source model trained first when ``adapt.source_pretrain_epochs`` > 0."""
        config = self.config
        if config.model.init or config.adapt.source_pretrain_epochs <= 0 or config.source is None:
            return config.model
        source_dir = self.run_dir / "source_pretrain"
        best = source_dir / "best.pt"
        if not best.exists():
            self.log.info(f"source stage: supervised training on {config.source} -> {source_dir}")
            train_supervised(source_stage_config(config), source_dir, data_root=self.data_root, progress=self.progress,
                             resume=(source_dir / "last.pt").exists())
        return dataclasses.replace(config.model, init=str(best))

    # ------------------------------------------------------------------ run
    def run(self) -> dict[str, Any]:
        config = self.config
        seed_everything(config.seed)
        save_config(config, self.run_dir / "config.yaml")
        source, target = self._load()
        target_samples = self._samples(target.train)
        source_samples = self._samples(source.train) if source is not None else None

        model, report = build_model(self._initial_model_config(), num_classes=0)
        if report is not None:
            self.log.info(f"initial weights: {report}")
        else:
            self.log.info("initial weights: random (no model.init); the paper recipes expect --init imagenet:PATH")
        model = self.method.prepare_model(model)
        if config.adapt.bn_groups > 1:
            model = convert_to_grouped_bn(model, config.adapt.bn_groups)
        model.to(self.device)
        optimizer = build_optimizer(model, config.optim)
        # Group 1 holds the method's per-epoch heads (classifiers from centroids), empty between epochs.
        optimizer.add_param_group({"params": [], "name": "heads"})
        scheduler = build_scheduler(optimizer, config.optim)
        ctx = AdaptContext(
            config=config,
            model=model,
            device=self.device,
            target_samples=target_samples,
            source_samples=source_samples,
            num_source_classes=source.num_train_ids if source is not None else 0,
            progress=self.progress,
        )

        start_epoch, best_map, state = 0, -1.0, None
        if self.resume:
            state = load_checkpoint(self.run_dir / "last.pt", expect_config=config)
            model.load_state_dict(state["train_state"]["model"])
            optimizer.load_state_dict(state["train_state"]["optimizer"])
            scheduler.load_state_dict(state["train_state"]["scheduler"])
            start_epoch, best_map = state["epoch"] + 1, state["best_mAP"]
            self.log.truncate_after(state["epoch"] + 1)  # rows count epochs from 1
            self.log.info(f"resumed from {self.run_dir / 'last.pt'}: continuing at epoch {start_epoch + 1}")
        self.method.setup(ctx, state["train_state"]["method"] if state else None)
        if state is not None:
            if self.gds is not None:
                self.gds.load_state_dict(state["train_state"]["gds"])
            _set_rng_state(state["train_state"]["rng"])
        else:
            figures = self._evaluate(model, target)
            best_map = figures["mAP"]
            self.log.append({"epoch": 0, **figures})
            self._save("best.pt", model, optimizer, scheduler, -1, best_map)

        source_loader = self._source_loader(source_samples, start_epoch) if self.method.uses_source_batches else None
        last_figures: dict[str, float] = {}
        for epoch in range(start_epoch, config.adapt.epochs):
            row: dict[str, Any] = {"epoch": epoch + 1}
            started = time.perf_counter()
            ctx.epoch = epoch
            features = self.method.target_features(ctx)
            if features is None:
                features = extract_features(model, target_samples, config.data, device=self.device,
                                            progress=self.progress, desc="target features")
            result = cluster_stage(
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
                self.log.info(f"epoch {epoch + 1}: every target image is an outlier; training on instances")
            elif result.num_clusters == 1 and result.num_outliers == 0:
                self.log.info(f"epoch {epoch + 1}: all target images fell into one cluster")
            epoch_labels = self.method.on_clusters(result, features, ctx)
            row.update(epoch_labels.figures)
            save_epoch_record(self.run_dir, epoch + 1, cluster_labels=result.labels,
                              training_labels=epoch_labels.labels, scores=epoch_labels.scores)
            if epoch_labels.scores:
                plot_score_distributions(self.run_dir)
            _set_head_parameters(optimizer, self.method.head_parameters())
            row.update(self._train_epoch(ctx, optimizer, epoch, epoch_labels.labels, source_loader))
            _set_head_parameters(optimizer, [])  # next epoch's heads start afresh; checkpoints stay shape-free
            if self.gds is not None:
                row.update(self.gds.figures())
            row["lr"] = optimizer.param_groups[0]["lr"]
            scheduler.step()
            due = config.adapt.eval_every > 0 and (epoch + 1) % config.adapt.eval_every == 0
            if due or epoch + 1 == config.adapt.epochs:
                last_figures = self._evaluate(model, target)
                row.update(last_figures)
                if last_figures["mAP"] > best_map:
                    best_map = last_figures["mAP"]
                    self._save("best.pt", model, optimizer, scheduler, epoch, best_map)
            row["epoch_seconds"] = round(time.perf_counter() - started, 2)
            self._save("last.pt", model, optimizer, scheduler, epoch, best_map)
            self.log.append(row)

        return self._finish(model, target, best_map, last_figures)

    # ------------------------------------------------------------------ pieces
    def _source_loader(self, samples: list[Sample], first_pass: int) -> Iterator[dict]:
        sampler = IdentitySampler(
            [s.pid for s in samples], cameras=[s.camid for s in samples],
            batch_size=self.config.data.batch_size, num_instances=self.config.data.num_instances,
            num_batches=self.config.adapt.iters_per_epoch, seed=self.config.seed + 1,
        )
        return _iterate_forever(self._loader(samples, sampler), sampler, first_pass)

    def _loader(self, samples: list[Sample], sampler: IdentitySampler, labels=None) -> DataLoader:
        return DataLoader(
            ImageDataset(samples, build_train_transform(self.config.data), labels=labels),
            batch_size=self.config.data.batch_size,
            sampler=sampler,
            num_workers=self.config.data.workers,
            drop_last=True,
            pin_memory=self.device.type == "cuda",
        )

    def _train_epoch(self, ctx: AdaptContext, optimizer, epoch: int, labels: np.ndarray, source_loader) -> dict[str, float]:
        config = self.config
        if (labels >= 0).sum() == 0:
            self.log.info(f"epoch {epoch + 1}: no target image has a training label; epoch skipped")
            return {}
        iterations = config.adapt.iters_per_epoch
        if config.adapt.passes_per_epoch > 0:
            iterations = max(1, round(config.adapt.passes_per_epoch * int((labels >= 0).sum()) / config.data.batch_size))
        sampler = IdentitySampler(
            labels, cameras=[s.camid for s in ctx.target_samples],
            batch_size=config.data.batch_size, num_instances=config.data.num_instances,
            num_batches=iterations, seed=config.seed,
        )
        sampler.set_epoch(epoch)
        loader = self._loader(ctx.target_samples, sampler, labels=labels)
        ctx.model.train()
        totals: dict[str, float] = {}
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.adapt.epochs}", disable=not self.progress, leave=False)
        for iteration, target_batch in enumerate(bar):
            batch = {"target": {**target_batch, "label": target_batch["pid"]}}
            if source_loader is not None:
                batch["source"] = next(source_loader)
            step = self.method.training_step(ctx, batch)
            losses = dict(step.losses)
            if self.gds is not None:
                losses.update(self.gds(step.target_features, batch["target"]["label"]))
            loss = sum(losses.values())
            if not math.isfinite(loss.item()):
                named = ", ".join(f"{k} {v.item():.4g}" for k, v in losses.items())
                raise TrainingDivergedError(
                    f"loss became {loss.item()} at epoch {epoch + 1}, iteration {iteration + 1} ({named}); stopped. "
                    f"The last good checkpoint {self.run_dir / 'last.pt'} is kept; try a lower optim.lr"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            self.method.after_step(ctx)
            for key, value in {"loss": loss, **losses}.items():
                totals[key] = totals.get(key, 0.0) + value.item()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        steps = max(1, len(loader))
        return {**{key: round(value / steps, 5) for key, value in totals.items()}, "iterations": len(loader)}

    def _evaluate(self, model, target: ReidDataset) -> dict[str, float]:
        return evaluate_model(model, target, self.config.data, device=self.device, progress=self.progress)

    def _save(self, name: str, model, optimizer, scheduler, epoch: int, best_map: float) -> None:
        # "model" is a plain ReidModel state dict (what evaluate / --init read); "train_state"
        # holds everything a resumed run needs to continue exactly.
        save_checkpoint(
            self.run_dir / name,
            self.config,
            epoch,
            model=self.method.export_state_dict(model),
            num_classes=0,
            best_mAP=best_map,
            train_state={
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "method": self.method.state_dict(),
                "gds": self.gds.state_dict() if self.gds is not None else {},
                "rng": _rng_state(),
            },
        )

    def _finish(self, model, target: ReidDataset, best_map: float, last: dict[str, float]) -> dict[str, Any]:
        rows = self.log.rows
        summary = {
            "method": self.config.adapt.method,
            "source": self.config.source,
            "target": target.name,
            "direct_transfer": {k: v for k, v in rows[0].items() if k != "epoch"} if rows else {},
            "last": last,
            "best_mAP": best_map,
        }
        for name in self.config.eval_datasets:
            other = load_dataset(name, self.data_root)
            summary.setdefault("also_evaluated", {})[other.name] = self._evaluate(model, other)
        atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        if self.gds is not None:  # the pictures GDS explains itself with (any run: udareid plot-distances)
            histograms = dataset_histograms(model, target, self.config.data, device=self.device, progress=self.progress)
            save_histograms(histograms, self.run_dir, title=f"{self.config.adapt.method} + GDS, last epoch, {target.name}")
        return summary


def source_stage_config(config: RunConfig) -> RunConfig:
    """The supervised source stage of a UDA run: ``train`` settings, ``optim`` with ``adapt.source_optim``."""
    return dataclasses.replace(
        config,
        dataset=config.source,
        eval_datasets=[],
        optim=update_dataclass(config.optim, config.adapt.source_optim, "adapt.source_optim"),
        train=dataclasses.replace(config.train, epochs=config.adapt.source_pretrain_epochs),
    )


def _set_head_parameters(optimizer: torch.optim.Optimizer, parameters: list[torch.nn.Parameter]) -> None:
    """Put ``parameters`` in the optimiser's heads group, forgetting the state of the previous ones."""
    group = next(g for g in optimizer.param_groups if g.get("name") == "heads")
    for old in group["params"]:
        optimizer.state.pop(old, None)
    group["params"] = list(parameters)


def _rng_state() -> dict[str, Any]:
    """Python, NumPy and torch generator states as tensors and plain containers (weights_only-safe)."""
    version, words, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, torch.tensor(words, dtype=torch.int64), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    version, words, gauss = state["python"]
    random.setstate((version, tuple(words.tolist()), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def adapt(config: RunConfig, run_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Run (or with ``resume=True`` continue) an adaptation; see :class:`AdaptationLoop`."""
    return AdaptationLoop(config, run_dir, **kwargs).run()
