"""Tiny two-domain re-ID data in the real Market-1501 / DukeMTMC-reID layouts, written in milliseconds.

Each identity is a two-colour block person (upper / lower colour) with pixel noise; the second
domain adds a colour offset, so a model trained on one sees a shifted distribution on the other.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# Run settings small enough for a CPU test: 32×16 images, ResNet-18, two epochs of two iterations.
TINY_ADAPT = {
    "device": "cpu",
    "data.height": 32, "data.width": 16, "data.batch_size": 16, "data.num_instances": 4,
    "data.workers": 0, "data.pad": 2, "data.eval_batch_size": 64,
    "model.arch": "resnet18",
    "optim.warmup_epochs": 0, "optim.milestones": [20],
    "clustering.k1": 6, "clustering.k2": 2, "clustering.min_samples": 2,
    "adapt.epochs": 2, "adapt.iters_per_epoch": 2, "adapt.eval_every": 1,
}


# Pre-training as small: MoCo / UP-ReID on both domains' train images, batches of 8 in 2 BN groups.
# The tiny runs' 32×16 images give a ResNet 4×2 and 2×1 maps, where some CPUs' bf16 kernels are wrong
# (uda_reid/models/arithmetic_check.py refuses bf16 there): tests of bf16 itself run at 64×32
# (128×64 with pre-training's last stride 2).
BF16_SIZE = {"data.height": 64, "data.width": 32}

TINY_PRETRAIN = {
    "device": "cpu", "model.arch": "resnet18",
    "data.height": 32, "data.width": 16, "data.workers": 0, "data.eval_batch_size": 64,
    "optim.optimizer": "sgd", "optim.lr": 0.01, "optim.nesterov": False, "optim.schedule": "cosine",
    "optim.warmup_epochs": 0, "optim.milestones": [],
    "pretrain.datasets": ["market1501", "dukemtmc"], "pretrain.epochs": 2, "pretrain.iters_per_epoch": 2,
    "pretrain.batch_size": 8, "pretrain.bn_groups": 2, "pretrain.queue_size": 24, "pretrain.dim": 16,
}


def tiny_pretrain_config(**overrides):
    """A ``RunConfig`` of the library defaults with ``TINY_PRETRAIN`` and ``overrides`` applied."""
    from uda_reid.config import RunConfig, apply_overrides

    return apply_overrides(RunConfig(), {**TINY_PRETRAIN, **overrides})


def tiny_adapt_config(**overrides):
    """A ``RunConfig`` of the library defaults with ``TINY_ADAPT`` and ``overrides`` (dotted keys) applied."""
    from uda_reid.config import RunConfig, apply_overrides

    return apply_overrides(RunConfig(), {**TINY_ADAPT, **overrides})


def _write_domain(root: Path, rng: np.random.Generator, offset: int, train_ids: int, test_ids: int, per_id: int) -> None:
    splits = (
        ("bounding_box_train", range(1, train_ids + 1)),
        ("query", range(100, 100 + test_ids)),
        ("bounding_box_test", range(100, 100 + test_ids)),
    )
    colours = {pid: rng.integers(0, 256, (2, 3)) for pid in range(1, 100 + test_ids)}
    for split, ids in splits:
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        for pid in ids:
            count = 1 if split == "query" else per_id
            for k in range(count):
                camera = 1 if split == "query" else (k % 3) + 1 + (split == "bounding_box_test")
                image = np.empty((32, 16, 3))
                image[:16] = colours[pid][0]
                image[16:] = colours[pid][1]
                image = np.clip(image + offset + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
                Image.fromarray(image).save(folder / f"{pid:04d}_c{camera}s1_{k:06d}_00.jpg")


def write_two_domains(data_root: Path, *, train_ids: int = 12, test_ids: int = 8, per_id: int = 6) -> Path:
    """`Market-1501-v15.09.15/` (source) and `DukeMTMC-reID/` (target, colour-shifted) under data_root."""
    rng = np.random.default_rng(0)
    _write_domain(data_root / "Market-1501-v15.09.15", rng, 0, train_ids, test_ids, per_id)
    _write_domain(data_root / "DukeMTMC-reID", rng, 40, train_ids, test_ids, per_id)
    return data_root


def metrics_rows(run_dir: Path) -> list[dict]:
    """The rows of a run's ``metrics.jsonl``."""
    import json

    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def tensorboard_events(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """What TensorBoard shows of a run: each scalar tag's (step, value) points after its purges, and
    each image tag's steps (as (step, width) pairs)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(Path(run_dir) / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    shown = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    shown.update({tag: [(e.step, e.width) for e in events.Images(tag)] for tag in events.Tags()["images"]})
    return shown


def assert_resume_reaches_the_uninterrupted_run(config, run_root: Path, data_root: Path, monkeypatch, *, kill_after: int = 2,
                                                run=None) -> None:
    """Run ``config`` (with ``run``, default the adaptation loop) once straight through and once killed
    after epoch ``kill_after``'s row, then resumed; every metrics row (timings aside) and every exported
    weight must be the same."""
    import pytest
    import torch

    from uda_reid.engine import run_log
    from uda_reid.models.checkpoints import load_checkpoint
    from uda_reid.engine.loop import adapt

    adapt = run or adapt

    adapt(config, run_root / "full", data_root=data_root, progress=False)
    append = run_log.RunLog.append

    def killed(self, row):
        append(self, row)
        if row["epoch"] == kill_after:
            raise KeyboardInterrupt

    monkeypatch.setattr(run_log.RunLog, "append", killed)
    with pytest.raises(KeyboardInterrupt):
        adapt(config, run_root / "cut", data_root=data_root, progress=False)
    monkeypatch.setattr(run_log.RunLog, "append", append)
    adapt(config, run_root / "cut", data_root=data_root, progress=False, resume=True)

    def comparable(run):
        return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in metrics_rows(run)]

    assert comparable(run_root / "cut") == comparable(run_root / "full")
    full = load_checkpoint(run_root / "full" / "last.pt")["model"]
    cut = load_checkpoint(run_root / "cut" / "last.pt")["model"]
    assert full.keys() == cut.keys() and all(torch.equal(full[k], cut[k]) for k in full)


def save_tiny_checkpoint(path: Path):
    """A run checkpoint of an untrained ResNet-18 on 32×16 images (seed 0): (path, the model in eval mode, its config)."""
    import torch

    from uda_reid.config import RunConfig, apply_overrides
    from uda_reid.models import ReidModel
    from uda_reid.models.checkpoints import save_checkpoint

    config = apply_overrides(RunConfig(), {"model.arch": "resnet18", "data.height": 32, "data.width": 16,
                                           "data.normalization": "imagenet",  # resolved, as a run writes it
                                           "data.workers": 0, "data.eval_batch_size": 10, "device": "cpu"})
    torch.manual_seed(0)
    model = ReidModel("resnet18")
    save_checkpoint(path, config, 0, model=model.state_dict(), num_classes=0, best_mAP=0.0)
    return path, model.eval(), config
