"""GDS as an add-on (``--gds`` / ``--gds-hard``; recipe section ``gds``): the global distance-distribution
separation term on the target batch's features of any method, and its pictures at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig
from ..evaluation.distances import dataset_histograms, save_histograms
from ..losses.gds import GlobalDistanceSeparation
from ..methods.base import AdaptContext, StepOutput
from .base import ADD_ONS, AddOn


@ADD_ONS.register("gds")
class Gds(AddOn):
    section = "gds"

    def __init__(self, config: RunConfig) -> None:
        super().__init__(config)
        self.term = GlobalDistanceSeparation(config.gds)  # checks the gds section

    @classmethod
    def enabled(cls, config: RunConfig) -> bool:
        return config.gds.enabled or config.gds.hard_mining

    def loss(self, step: StepOutput, batch: dict[str, dict[str, torch.Tensor]], ctx: AdaptContext) -> dict[str, torch.Tensor]:
        features = step.spaces[0]
        self.term.to(features.device)
        labels = batch["target"]["label"].to(features.device)
        # Statistics of the global batch, updated alike on every rank.
        return self.term(ctx.dist.gather_batch(features), ctx.dist.gather_batch(labels))

    def epoch_figures(self) -> dict[str, float]:
        return self.term.figures()

    def state_dict(self) -> dict[str, Any]:
        return self.term.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.term.load_state_dict(state)

    def finish(self, network: torch.nn.Module, target: Any, run_dir: Path, ctx: AdaptContext) -> None:
        """The pictures GDS explains itself with (any run: ``udareid plot-distances``)."""
        histograms = dataset_histograms(network, target, self.config.data, device=ctx.device, progress=ctx.progress)
        save_histograms(histograms, run_dir, title=f"{self.config.adapt.method} + GDS, last epoch, {target.name}")
