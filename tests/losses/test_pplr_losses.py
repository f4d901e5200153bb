"""AALS, the part loss and PGLR against hand computations with explicit loops (numpy, float64)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from uda_reid.losses.pplr import aals_loss, part_identity_loss, pglr_loss, pglr_targets

GENERATOR = torch.Generator().manual_seed(0)
LOGITS = torch.randn(5, 4, generator=GENERATOR, dtype=torch.float64) * 2.0  # N=5 samples, K=4 classes
PART_LOGITS = torch.randn(3, 5, 4, generator=GENERATOR, dtype=torch.float64) * 2.0  # P=3 parts
LABELS = torch.tensor([0, 3, 1, 1, 2])
AGREEMENT = torch.tensor(
    [[0.9, 0.1, 0.5], [0.0, 1.0, 0.3], [0.25, 0.25, 0.25], [1.0, 0.0, 0.6], [0.4, 0.8, 0.2]], dtype=torch.float64
)  # N×P


def softmax_rows(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def aals_by_hand(logits: np.ndarray, labels: list[int], agreement: np.ndarray) -> float:
    """C·(−log p_y) + (1 − C)·Σ_c u_c·log(u_c / p_c), u = 1/K, averaged over the samples."""
    probabilities = softmax_rows(logits)
    num_classes = logits.shape[1]
    total = 0.0
    for i, label in enumerate(labels):
        cross_entropy = -math.log(probabilities[i, label])
        kl = sum((1 / num_classes) * math.log((1 / num_classes) / probabilities[i, c]) for c in range(num_classes))
        total += agreement[i] * cross_entropy + (1 - agreement[i]) * kl
    return total / len(labels)


def test_aals_at_full_agreement_is_plain_cross_entropy() -> None:
    loss = aals_loss(LOGITS, LABELS, torch.ones(5, dtype=torch.float64))
    assert loss.item() == pytest.approx(F.cross_entropy(LOGITS, LABELS).item(), rel=1e-12)


def test_aals_matches_hand_computation_and_smoothed_cross_entropy() -> None:
    agreement = AGREEMENT[:, 1]
    loss = aals_loss(LOGITS, LABELS, agreement)
    expected = aals_by_hand(LOGITS.numpy(), LABELS.tolist(), agreement.numpy())
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    # the same as the cross-entropy against C·one-hot + (1−C)·uniform, minus the constant (1−C)·log K
    probabilities = softmax_rows(LOGITS.numpy())
    smoothed = 0.0
    for i, label in enumerate(LABELS.tolist()):
        c = agreement[i].item()
        target = np.full(4, (1 - c) / 4)
        target[label] += c
        smoothed += -(target * np.log(probabilities[i])).sum() - (1 - c) * math.log(4)
    assert loss.item() == pytest.approx(smoothed / 5, rel=1e-12)
    # at zero agreement the minimum is the uniform prediction
    assert aals_loss(torch.zeros(2, 4), torch.tensor([1, 2]), torch.zeros(2)).item() == pytest.approx(0.0, abs=1e-7)


def test_aals_gradient_reaches_logits_only_and_is_finite() -> None:
    logits = LOGITS.clone().requires_grad_(True)
    agreement = AGREEMENT[:, 0].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: aals_loss(x, LABELS, agreement), (logits,))
    aals_loss(logits, LABELS, agreement).backward()
    assert torch.isfinite(logits.grad).all() and agreement.grad is None


def test_part_loss_averages_aals_over_parts_and_warms_up_with_label_smoothing() -> None:
    loss = part_identity_loss(PART_LOGITS, LABELS, AGREEMENT)
    expected = np.mean([aals_by_hand(PART_LOGITS[n].numpy(), LABELS.tolist(), AGREEMENT[:, n].numpy()) for n in range(3)])
    assert loss.item() == pytest.approx(expected, rel=1e-12)

    warmup = part_identity_loss(PART_LOGITS, LABELS, AGREEMENT, warmup=True, epsilon=0.1)
    by_hand = []
    for n in range(3):
        probabilities = softmax_rows(PART_LOGITS[n].numpy())
        total = 0.0
        for i, label in enumerate(LABELS.tolist()):
            target = np.full(4, 0.1 / 4)
            target[label] += 0.9
            total += -(target * np.log(probabilities[i])).sum()
        by_hand.append(total / 5)
    assert warmup.item() == pytest.approx(np.mean(by_hand), rel=1e-12)
    # the warm-up ignores the agreement
    other = part_identity_loss(PART_LOGITS, LABELS, torch.zeros(5, 3), warmup=True, epsilon=0.1)
    assert other.item() == pytest.approx(warmup.item(), rel=1e-12)


def test_pglr_targets_sum_to_one_and_match_hand_computation() -> None:
    part_logits = PART_LOGITS.clone().requires_grad_(True)
    targets = pglr_targets(LABELS, part_logits, AGREEMENT, beta=0.5)
    assert not targets.requires_grad  # part predictions are detached
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(5, dtype=torch.float64))

    part_probabilities = [softmax_rows(PART_LOGITS[n].numpy()) for n in range(3)]
    for i, label in enumerate(LABELS.tolist()):
        exp_agreement = [math.exp(AGREEMENT[i, n].item()) for n in range(3)]
        weights = [e / sum(exp_agreement) for e in exp_agreement]
        for c in range(4):
            ensemble = sum(weights[n] * part_probabilities[n][i, c] for n in range(3))
            expected = 0.5 * (c == label) + 0.5 * ensemble
            assert targets[i, c].item() == pytest.approx(expected, rel=1e-12)

    only_labels = pglr_targets(LABELS, PART_LOGITS, AGREEMENT, beta=1.0)
    torch.testing.assert_close(only_labels, F.one_hot(LABELS, 4).double())


def test_pglr_loss_is_soft_cross_entropy_and_plain_cross_entropy_at_beta_one() -> None:
    targets = pglr_targets(LABELS, PART_LOGITS, AGREEMENT, beta=0.5)
    logits = LOGITS.clone().requires_grad_(True)
    loss = pglr_loss(logits, targets)
    log_p = np.log(softmax_rows(LOGITS.numpy()))
    expected = np.mean([-(targets[i].numpy() * log_p[i]).sum() for i in range(5)])
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    hard = pglr_loss(LOGITS, pglr_targets(LABELS, PART_LOGITS, AGREEMENT, beta=1.0))
    assert hard.item() == pytest.approx(F.cross_entropy(LOGITS, LABELS).item(), rel=1e-12)


def test_inputs_are_not_modified_and_bad_inputs_are_named() -> None:
    logits, labels, agreement = PART_LOGITS.clone(), LABELS.clone(), AGREEMENT.clone()
    part_identity_loss(logits, labels, agreement)
    pglr_targets(labels, logits, agreement)
    assert torch.equal(logits, PART_LOGITS) and torch.equal(labels, LABELS) and torch.equal(agreement, AGREEMENT)
    with pytest.raises(ValueError, match=r"labels must be in 0..3 \(outliers, −1, are not trained\), got -1..3"):
        aals_loss(LOGITS, torch.tensor([0, 3, -1, 1, 2]), AGREEMENT[:, 0])
    with pytest.raises(ValueError, match=r"agreement must have shape \(5, 3\), got \(3, 5\)"):
        pglr_targets(LABELS, PART_LOGITS, AGREEMENT.t())
    with pytest.raises(ValueError, match="P×N×K with N=4"):
        part_identity_loss(PART_LOGITS, LABELS[:4], AGREEMENT[:4])
    with pytest.raises(ValueError, match="beta must be in"):
        pglr_targets(LABELS, PART_LOGITS, AGREEMENT, beta=1.5)
