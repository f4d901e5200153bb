"""GDS (Jin et al., ECCV 2020): global distance-distribution separation, a loss term on target batches.

The distances of positive pairs and of negative pairs (by pseudo-label) are each modelled as one
Gaussian over the whole data set. Their means and variances are global: a momentum update folds in
every mini-batch (the batch variance is measured around the *old* global mean, as the supplement
derives it), and the loss is computed on the updated statistics, so the batch's share carries the
gradient. ``L_GDS`` pushes the two means apart and makes both distributions sharp; the hard-mining
term ``L_H`` acts on the pairs in the tails of the distributions. Facts and open choices: docs/methods.md §3;
every open choice is a field of :class:`~uda_reid.addons.gds.GdsOptions` (recipe section ``gds``).

Under torchrun the loop hands the term the gathered global batch (features with their gradient),
so every process folds the same pairs into the statistics: they stay identical without any
exchange of the buffers, and equal to those of a single process on the same batches.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import check_section
from .triplet import pairwise_euclidean



def pair_distances(
    features: torch.Tensor, labels: torch.Tensor, *, distance: str = "euclidean", pairs: str = "all"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances of the positive and of the negative pairs of a batch (1-D tensors, possibly empty).

    Features are L2-normalised first, so both distances lie in [0, 2]. ``pairs="all"``: every
    unordered pair i < j; ``"hardest"``: per anchor its farthest positive and nearest negative
    (the batch-hard triplet's pairs).
    """
    unit = F.normalize(features, dim=1)
    if distance == "euclidean":
        dist = pairwise_euclidean(unit)
    else:
        dist = 1.0 - unit @ unit.t()
    same = labels[:, None] == labels[None, :]
    if pairs == "all":
        upper = torch.ones_like(same).triu(diagonal=1)
        return dist[same & upper], dist[~same & upper]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positive, negative = same & ~eye, ~same
    has_pos, has_neg = positive.any(dim=1), negative.any(dim=1)
    hardest_pos = dist.masked_fill(~positive, float("-inf")).amax(dim=1)[has_pos]
    hardest_neg = dist.masked_fill(~negative, float("inf")).amin(dim=1)[has_neg]
    return hardest_pos, hardest_neg


def momentum_statistics(
    distances: torch.Tensor, mean: torch.Tensor, variance: torch.Tensor, momentum: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One momentum step of a global Gaussian: the batch ``distances`` are the new part.

    μ ← β·μ + (1−β)·mean(d) and σ² ← β·σ² + (1−β)·mean((d − μ_old)²). Gradients flow through the
    batch share; the old statistics are constants. With an empty batch the statistics are unchanged.
    """
    if distances.numel() == 0:
        return mean, variance
    new_mean = momentum * mean + (1.0 - momentum) * distances.mean()
    new_variance = momentum * variance + (1.0 - momentum) * (distances - mean).pow(2).mean()
    return new_mean, new_variance


def separation_loss(mean_pos: torch.Tensor, mean_neg: torch.Tensor, *, kind: str = "softplus", margin: float = 0.0) -> torch.Tensor:
    """Push the positive mean below the negative mean: softplus(μ+ − μ− + m) or relu(μ+ − μ− + m)."""
    gap = mean_pos - mean_neg + margin
    return F.softplus(gap) if kind == "softplus" else F.relu(gap)


def sharpness_loss(variance_pos: torch.Tensor, variance_neg: torch.Tensor) -> torch.Tensor:
    """Make both distributions narrow: σ+² + σ−²."""
    return variance_pos + variance_neg


def hard_mining_loss(
    positive: torch.Tensor, negative: torch.Tensor, positive_threshold: torch.Tensor, negative_threshold: torch.Tensor
) -> torch.Tensor:
    """Pull positives beyond ``positive_threshold`` back and push negatives below ``negative_threshold`` out.

    mean over hard positives of (d − t+) + mean over hard negatives of (t− − d); a side with no hard
    pair adds nothing. Thresholds are constants (no gradient through the statistics that set them).
    """
    t_pos, t_neg = positive_threshold.detach(), negative_threshold.detach()
    loss = positive.new_zeros(())
    hard_pos = positive[positive > t_pos]
    hard_neg = negative[negative < t_neg]
    if hard_pos.numel():
        loss = loss + (hard_pos - t_pos).mean()
    if hard_neg.numel():
        loss = loss + (t_neg - hard_neg).mean()
    return loss


class GlobalDistanceSeparation(nn.Module):
    """The GDS term with its global statistics (``--gds``; ``--gds-hard`` adds hard mining).

    ``forward(features, labels)`` (a target batch: ``N×D`` features with gradients, ``N`` pseudo-labels)
    returns the named, weighted loss terms and, in training mode, folds the batch into the global
    statistics. Buffers ``mean`` and ``variance`` hold (positive, negative); they are in the state dict
    so a resumed run continues with them.
    """

    mean: torch.Tensor
    variance: torch.Tensor

    def __init__(self, config: Any) -> None:  # the gds section (addons.gds.GdsOptions, a layer above)
        super().__init__()
        check_section(config, "gds")  # its declared rules, for options built in code too
        self.config = config
        self.register_buffer("mean", torch.full((2,), float(config.initial_mean)))
        self.register_buffer("variance", torch.full((2,), float(config.initial_variance)))
        self.hard_mining = config.hard_mining

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        c = self.config
        positive, negative = pair_distances(features, labels.to(features.device), distance=c.distance, pairs=c.pairs)
        mean = self.mean.detach().clone().to(features.dtype)
        variance = self.variance.detach().clone().to(features.dtype)
        mean_pos, var_pos = momentum_statistics(positive, mean[0], variance[0], c.momentum)
        mean_neg, var_neg = momentum_statistics(negative, mean[1], variance[1], c.momentum)
        if self.training:
            with torch.no_grad():
                self.mean.copy_(torch.stack([mean_pos, mean_neg]).detach())
                self.variance.copy_(torch.stack([var_pos, var_neg]).detach())
        if c.gradient == "batch":  # the loss on the batch's own statistics; the globals only set thresholds
            mean_pos, var_pos = _batch_statistics(positive, mean_pos, var_pos)
            mean_neg, var_neg = _batch_statistics(negative, mean_neg, var_neg)
        anchor = features.sum() * 0.0  # keeps a graph when the batch has no pair of either kind
        loss = c.lambda_sigma * sharpness_loss(var_pos, var_neg)
        loss = loss + separation_loss(mean_pos, mean_neg, kind=c.separation, margin=c.margin)
        losses = {"loss_gds": c.weight * loss + anchor}
        if self.hard_mining:
            t_pos, t_neg = self.hard_thresholds()
            losses["loss_gds_hard"] = c.lambda_hard * hard_mining_loss(positive, negative, t_pos, t_neg) + anchor
        return losses

    def hard_thresholds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(t+, t−) from the current global statistics, by ``gds.hard_rule``.

        ``tail``: positives beyond μ+ + kσ+ and negatives below μ− − kσ− are hard. ``overlap``:
        positives beyond μ− − kσ− (inside the negative distribution) and negatives below μ+ + kσ+.
        """
        k = self.config.hard_sigma
        (mu_pos, mu_neg), (sd_pos, sd_neg) = self.mean, self.variance.sqrt()
        if self.config.hard_rule == "tail":
            return mu_pos + k * sd_pos, mu_neg - k * sd_neg
        return mu_neg - k * sd_neg, mu_pos + k * sd_pos

    def figures(self) -> dict[str, float]:
        """The global statistics for ``metrics.jsonl``, with the 3σ tails the paper plots."""
        (mu_pos, mu_neg), (sd_pos, sd_neg) = self.mean.tolist(), self.variance.sqrt().tolist()
        return {
            "gds_mean_pos": round(mu_pos, 5),
            "gds_std_pos": round(sd_pos, 5),
            "gds_mean_neg": round(mu_neg, 5),
            "gds_std_neg": round(sd_neg, 5),
            "gds_tail_pos": round(mu_pos + 3 * sd_pos, 5),  # μ+ + 3σ+
            "gds_tail_neg": round(mu_neg - 3 * sd_neg, 5),  # μ− − 3σ−
        }


def _batch_statistics(distances: torch.Tensor, mean: torch.Tensor, variance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of the batch itself (the given globals when the batch has none of this kind)."""
    if distances.numel() == 0:
        return mean.detach(), variance.detach()
    return distances.mean(), distances.var(unbiased=False)
