"""Self-supervised pre-training losses: MoCo's InfoNCE, UP-ReID's patch InfoNCE and its MMD consistency.

All features are L2-normalised rows; ``queue`` holds the negatives (``K×D``, keys of earlier batches).
"""

from __future__ import annotations

import torch

#: Gaussian MMD bandwidths as multiples of the mean pairwise squared distance (DAN / JAN's choice).
GAUSSIAN_BANDWIDTH_MULTIPLIERS = (0.25, 0.5, 1.0, 2.0, 4.0)


def info_nce(query: torch.Tensor, positive: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo's loss: −log e^{q·k⁺/τ} / (e^{q·k⁺/τ} + Σⱼ e^{q·nⱼ/τ}), mean over the batch (positive at index 0)."""
    return multi_positive_info_nce(query, positive.unsqueeze(1), queue, temperature)


def multi_positive_info_nce(query: torch.Tensor, positives: torch.Tensor, queue: torch.Tensor,
                            temperature: float) -> torch.Tensor:
    """UP-ReID's Eq. 10: −log Σₚ e^{q·p/τ} / (Σₚ e^{q·p/τ} + Σⱼ e^{q·nⱼ/τ}), every positive in the numerator.

    ``query`` ``N×D``, ``positives`` ``N×P×D``, ``queue`` ``K×D``; the keys carry no gradient (MoCo's
    key encoder), so ``positives`` and ``queue`` are detached here.
    """
    positive_logits = torch.einsum("nd,npd->np", query, positives.detach()) / temperature
    negative_logits = query @ queue.detach().t() / temperature
    everything = torch.cat([positive_logits, negative_logits], dim=1)
    return (torch.logsumexp(everything, dim=1) - torch.logsumexp(positive_logits, dim=1)).mean()


def linear_mmd(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MMD² with the linear kernel: the squared distance between the two sample means (rows are samples)."""
    return (x.mean(dim=0) - y.mean(dim=0)).pow(2).sum()


def gaussian_mmd(x: torch.Tensor, y: torch.Tensor,
                 multipliers: tuple[float, ...] = GAUSSIAN_BANDWIDTH_MULTIPLIERS) -> torch.Tensor:
    """Biased (V-statistic) MMD² with a sum of Gaussian kernels exp(−‖a−b‖² / (m·σ²)).

    σ² is the mean pairwise squared distance of the pooled samples, without gradient, so the kernel
    scales with the data and the loss cannot shrink by inflating distances.
    """
    pooled = torch.cat([x, y], dim=0)
    norms = pooled.pow(2).sum(dim=1)
    distances = (norms[:, None] + norms[None, :] - 2 * pooled @ pooled.t()).clamp_min(0)  # smooth at 0, unlike cdist
    count = len(pooled)
    scale = distances.detach().sum() / max(count * count - count, 1)
    scale = scale.clamp_min(1e-12)
    kernel = sum(torch.exp(-distances / (multiplier * scale)) for multiplier in multipliers)
    n = len(x)
    return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()


MMD_ESTIMATORS = {"gaussian": gaussian_mmd, "linear": linear_mmd}


def consistency_loss(query: torch.Tensor, key: torch.Tensor, original_query: torch.Tensor,
                     original_key: torch.Tensor, estimator: str = "gaussian") -> torch.Tensor:
    """UP-ReID's L_consist: MMD between the in-batch similarities of the augmented views, A(q, k) = q·kᵀ,
    and those of the original images, A(q_r, k_r), each row (one image's similarities to the batch)
    a sample. The original images' side is a target: no gradient reaches it."""
    augmented = query @ key.t()
    with torch.no_grad():
        original = original_query @ original_key.t()
    return MMD_ESTIMATORS[estimator](augmented, original.detach())
