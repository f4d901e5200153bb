"""GDS as an add-on (``--gds`` / ``--gds-hard``; recipe section ``gds``): the global distance-distribution
separation term on the target batch's features of any method, and its pictures at the end."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import FRACTION, NON_NEGATIVE, POSITIVE, Limit, RunConfig, setting
from ..evaluation.distances import dataset_histograms, save_histograms
from ..losses.gds import GlobalDistanceSeparation
from ..methods.base import AdaptContext, StepOutput
from .base import ADD_ONS, AddOn, CliFlag


@dataclass
class GdsOptions:
    """GDS (Jin et al., ECCV 2020) added to any method's target batches (``--gds`` / ``--gds-hard``):
    the recipe section ``gds``.

    The paper pins the initial statistics, λσ and λh; the rest is ours (docs/methods.md §3 lists what the
    sources leave open) and each is a key here.
    """

    enabled: bool = setting(False, help="--gds")
    hard_mining: bool = setting(False, help="--gds-hard (also enables GDS)")
    weight: float = setting(1.0, limit=NON_NEGATIVE, help="of L_GDS in the total loss")
    lambda_sigma: float = setting(1.0, limit=NON_NEGATIVE, help="λσ: variance (sharpness) vs mean (separation) terms")
    lambda_hard: float = setting(0.5, limit=NON_NEGATIVE, help="λh: weight of the hard-mining loss")
    momentum: float = setting(0.9, limit=FRACTION, help="β: weight the old global statistics keep per batch")
    initial_mean: float = setting(0.5, limit=Limit(0, 2), help="distances of L2-normalised features lie in [0, 2]")
    initial_variance: float = setting(0.16666667, limit=POSITIVE, help="1/6")
    distance: str = setting("euclidean", choices=("euclidean", "cosine"),
                            help="euclidean (on L2-normalised features) | cosine (1 − cos)")
    pairs: str = setting("all", choices=("all", "hardest"),
                         help="all: every pair of the batch by pseudo-label | hardest: per-anchor batch-hard pairs")
    separation: str = setting("softplus", choices=("softplus", "hinge"),
                              help="softplus(μ+ − μ− + margin) | hinge: relu(μ+ − μ− + margin)")
    margin: float = setting(0.0, limit=NON_NEGATIVE)
    gradient: str = setting(
        "updated", choices=("updated", "batch"),
        help="updated: loss on the momentum-updated statistics, gradient through the batch share (the "
             "supplement's derivation) | batch: loss on the batch's own statistics")
    hard_rule: str = setting(
        "tail", choices=("tail", "overlap"),
        help="tail: positives beyond μ+ + kσ+ / negatives below μ− − kσ− are hard | overlap: positives beyond "
             "μ− − kσ− / negatives below μ+ + kσ+ (pairs inside the other distribution); k = hard_sigma")
    hard_sigma: float = setting(1.0, limit=NON_NEGATIVE)


@ADD_ONS.register("gds")
class Gds(AddOn):
    section = "gds"
    Options = GdsOptions
    flags = (
        CliFlag("--gds", "Add the GDS term (global distance-distribution separation) to the method's losses.",
                sets=(("gds.enabled", True),)),
        CliFlag("--gds-hard", "GDS with its distribution-based hard mining (GDS-H).",
                sets=(("gds.enabled", True), ("gds.hard_mining", True))),
    )

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
