"""``udareid pretrain`` on the one training loop: the pre-training method named by ``pretrain.method``
(``uda_reid.pretraining``) trained by :class:`~uda_reid.engine.loop.TrainingLoop`.

The run folder is every run's (``config.yaml``, ``metrics.jsonl``, ``log.txt``, ``last.pt``, ``best.pt``,
``summary.json``) plus ``backbone.pth`` after every epoch: the query backbone with torchvision's key
names, what ``--init moco:PATH`` reads. With ``eval_datasets`` the frozen backbone's retrieval mAP on
the first is measured every ``pretrain.eval_every`` epochs and at the end (the others at the end).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..pretraining import BACKBONE_FILE, PRETRAINERS
from .loop import TrainingLoop

__all__ = ["BACKBONE_FILE", "pretrain", "pretraining_loop"]


def pretraining_loop(config: RunConfig, run_dir: str | Path, **kwargs: Any) -> TrainingLoop:
    """The training loop of a pre-training run (the method and its settings checked before any work)."""
    return TrainingLoop(config, run_dir, method=PRETRAINERS.get(config.pretrain.method), **kwargs)


def pretrain(config: RunConfig, run_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Run (or with ``resume=True`` continue) a pre-training run; under torchrun on every process."""
    return pretraining_loop(config, run_dir, **kwargs).run()
