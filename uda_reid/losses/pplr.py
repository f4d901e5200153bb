"""PPLR's identity losses (Cho et al., CVPR 2022): AALS for the parts, PGLR for the global branch.

Both weigh labels by the cross-agreement C (``N×P``, ``uda_reid.clustering.agreement``): a part
whose neighbourhood of an image agrees with the global one gets a sharper label (AALS) and a larger
say in the global target (PGLR). Facts and defaults: docs/methods.md §4. Agreement and targets are
constants: no gradient flows into them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _check_logits_labels(logits: torch.Tensor, labels: torch.Tensor, what: str) -> torch.Tensor:
    if logits.dim() != 2:
        raise ValueError(f"{what}: logits must be N×K (samples × classes), got shape {tuple(logits.shape)}")
    labels = torch.as_tensor(labels, device=logits.device).long()
    if labels.shape != (logits.shape[0],):
        raise ValueError(f"{what}: need one label per logit row ({logits.shape[0]}), got shape {tuple(labels.shape)}")
    if labels.numel() and not (0 <= int(labels.min()) and int(labels.max()) < logits.shape[1]):
        raise ValueError(
            f"{what}: labels must be in 0..{logits.shape[1] - 1} (outliers, −1, are not trained), "
            f"got {int(labels.min())}..{int(labels.max())}"
        )
    return labels


def _check_part_logits(part_logits: torch.Tensor, num_samples: int, what: str) -> None:
    if part_logits.dim() != 3 or part_logits.shape[1] != num_samples:
        raise ValueError(
            f"{what}: part logits must be P×N×K with N={num_samples}, got shape {tuple(part_logits.shape)}"
        )


def _check_agreement(agreement: torch.Tensor, shape: tuple[int, ...], reference: torch.Tensor, what: str) -> torch.Tensor:
    agreement = torch.as_tensor(agreement).detach().to(device=reference.device, dtype=reference.dtype)
    if tuple(agreement.shape) != shape:
        raise ValueError(f"{what}: agreement must have shape {shape}, got {tuple(agreement.shape)}")
    return agreement


def aals_loss(logits: torch.Tensor, labels: torch.Tensor, agreement: torch.Tensor) -> torch.Tensor:
    """Agreement-aware label smoothing of one part: mean over i of C_i·CE(y_i, p_i) + (1−C_i)·KL(u ‖ p_i).

    ``logits`` ``N×K``, ``labels`` ``N`` in 0..K−1, ``agreement`` ``N`` (this part's column of C).
    KL(u ‖ p) = Σ_c u_c·log(u_c / p_c) with u uniform (1/K): the divergence of the prediction
    *from* the uniform distribution, i.e. the cross-entropy of p against u minus log K (the
    official code's ``F.kl_div(log p, u)``). So the loss equals the cross-entropy against the
    smoothed target C·one-hot + (1−C)·u, minus the constant (1−C)·log K: at C = 1 it is plain
    cross-entropy, at C = 0 it only pulls the prediction towards uniform.
    """
    labels = _check_logits_labels(logits, labels, "aals_loss")
    agreement = _check_agreement(agreement, (logits.shape[0],), logits, "aals_loss")
    log_probabilities = F.log_softmax(logits, dim=1)
    cross_entropy = -log_probabilities.gather(1, labels[:, None]).squeeze(1)
    kl_from_uniform = -math.log(logits.shape[1]) - log_probabilities.mean(dim=1)
    return (agreement * cross_entropy + (1.0 - agreement) * kl_from_uniform).mean()


def part_identity_loss(
    part_logits: torch.Tensor,
    labels: torch.Tensor,
    agreement: torch.Tensor,
    *,
    warmup: bool = False,
    epsilon: float = 0.1,
) -> torch.Tensor:
    """PPLR's part loss: mean over the P parts of :func:`aals_loss` with agreement C[:, n].

    ``part_logits`` ``P×N×K``, ``labels`` ``N``, ``agreement`` ``N×P``. During the warm-up
    (``warmup=True``, PPLR's first 5 epochs) each part uses plain label smoothing instead: the
    cross-entropy against (1−ε)·one-hot + ε/K, and the agreement is not used.
    """
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"part_identity_loss: epsilon must be in [0, 1], got {epsilon!r}")
    _check_part_logits(part_logits, len(labels), "part_identity_loss")
    num_parts = part_logits.shape[0]
    agreement = _check_agreement(agreement, (part_logits.shape[1], num_parts), part_logits, "part_identity_loss")
    if warmup:
        labels = _check_logits_labels(part_logits[0], labels, "part_identity_loss")
        losses = [F.cross_entropy(logits, labels, label_smoothing=epsilon) for logits in part_logits]
    else:
        losses = [aals_loss(part_logits[n], labels, agreement[:, n]) for n in range(num_parts)]
    return torch.stack(losses).mean()


def pglr_targets(
    labels: torch.Tensor, part_logits: torch.Tensor, agreement: torch.Tensor, beta: float = 0.5
) -> torch.Tensor:
    """Part-guided refined labels ``N×K``: β·one-hot(y) + (1−β)·Σ_n w_n·softmax(part logits n).

    ``labels`` ``N``, ``part_logits`` ``P×N×K`` (detached here), ``agreement`` ``N×P``;
    w = softmax over the parts of C[i, :], so the parts that agree most with the global
    neighbourhood dominate the ensemble. Each row sums to 1.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"pglr_targets: beta must be in [0, 1], got {beta!r}")
    _check_part_logits(part_logits, len(labels), "pglr_targets")
    part_logits = part_logits.detach()
    labels = _check_logits_labels(part_logits[0], labels, "pglr_targets")
    agreement = _check_agreement(agreement, (part_logits.shape[1], part_logits.shape[0]), part_logits, "pglr_targets")
    part_weights = agreement.softmax(dim=1)  # N×P
    ensemble = torch.einsum("np,pnk->nk", part_weights, part_logits.softmax(dim=2))
    one_hot = F.one_hot(labels, part_logits.shape[2]).to(ensemble.dtype)
    return beta * one_hot + (1.0 - beta) * ensemble


def pglr_loss(global_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the global prediction against soft targets: mean over i of −Σ_k t_ik·log p_ik.

    ``global_logits`` and ``targets`` ``N×K`` (targets from :func:`pglr_targets`, treated as
    constants).
    """
    if global_logits.dim() != 2 or tuple(targets.shape) != tuple(global_logits.shape):
        raise ValueError(
            f"pglr_loss: logits and targets must both be N×K, got {tuple(global_logits.shape)} and {tuple(targets.shape)}"
        )
    targets = targets.detach().to(global_logits.dtype)
    return -(targets * F.log_softmax(global_logits, dim=1)).sum(dim=1).mean()
