"""GDS: momentum statistics, each loss term's gradient, the effect on a toy problem, degenerate batches."""

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from uda_reid.addons.gds import GdsOptions
from uda_reid.errors import ConfigError
from uda_reid.losses.gds import (
    GlobalDistanceSeparation,
    hard_mining_loss,
    momentum_statistics,
    pair_distances,
    separation_loss,
    sharpness_loss,
)


def gds(**changes) -> GlobalDistanceSeparation:
    return GlobalDistanceSeparation(dataclasses.replace(GdsOptions(enabled=True), **changes))


def test_pair_distances_split_every_unordered_pair_by_label():
    torch.manual_seed(0)
    features = torch.randn(6, 5)
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    positive, negative = pair_distances(features, labels)
    unit = features / features.norm(dim=1, keepdim=True)
    expected_pos, expected_neg = [], []
    for i, j in itertools.combinations(range(6), 2):
        d = float((unit[i] - unit[j]).norm())
        (expected_pos if labels[i] == labels[j] else expected_neg).append(d)
    assert sorted(positive.tolist()) == pytest.approx(sorted(expected_pos), abs=1e-5)
    assert sorted(negative.tolist()) == pytest.approx(sorted(expected_neg), abs=1e-5)
    assert len(positive) == 4 and len(negative) == 11


def test_hardest_pairs_are_each_anchors_farthest_positive_and_nearest_negative():
    features = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 0, 1])
    positive, negative = pair_distances(features, labels, pairs="hardest")
    unit = features / features.norm(dim=1, keepdim=True)
    dist = torch.cdist(unit, unit)
    assert positive.tolist() == pytest.approx([float(dist[0, 2]), float(dist[1, 2]), float(dist[2, 0])], abs=1e-5)
    assert negative.tolist() == pytest.approx([float(dist[i, j]) for i, j in [(0, 3), (1, 3), (2, 3), (3, 2)]], abs=1e-5)


def test_momentum_statistics_unroll_to_the_supplements_weighted_sums():
    rng = np.random.default_rng(0)
    batches = [torch.tensor(rng.uniform(0, 2, size=rng.integers(1, 20))) for _ in range(30)]
    beta = 0.8
    mean, variance = torch.tensor(0.5, dtype=torch.float64), torch.tensor(1 / 6, dtype=torch.float64)
    means = [0.5]
    for batch in batches:
        mean, variance = momentum_statistics(batch, mean, variance, beta)
        means.append(float(mean))
    # μ_T = β^T μ_0 + Σ_t (1−β) β^{T−t} mean(batch_t)
    T = len(batches)
    expected_mean = beta**T * 0.5 + sum((1 - beta) * beta ** (T - 1 - t) * float(b.mean()) for t, b in enumerate(batches))
    # σ²_T = β^T σ²_0 + Σ_t (1−β) β^{T−t} mean((batch_t − μ_{t−1})²): each batch around the mean before it
    expected_var = beta**T / 6 + sum(
        (1 - beta) * beta ** (T - 1 - t) * float(((b - means[t]) ** 2).mean()) for t, b in enumerate(batches)
    )
    assert float(mean) == pytest.approx(expected_mean, rel=1e-12)
    assert float(variance) == pytest.approx(expected_var, rel=1e-12)


def test_momentum_statistics_track_the_pooled_mean_and_variance_of_a_long_history():
    # The supplement's claim: with a long history the momentum statistics follow the mean and variance
    # of all pairs seen (for a stationary stream), even from the uninformed start (0.5, 1/6).
    rng = np.random.default_rng(1)
    beta = 0.99
    mean, variance = torch.tensor(0.5, dtype=torch.float64), torch.tensor(1 / 6, dtype=torch.float64)
    seen = []
    for _ in range(3000):
        batch = rng.normal(1.3, 0.12, size=96)
        seen.append(batch)
        mean, variance = momentum_statistics(torch.tensor(batch), mean, variance, beta)
    pooled = np.concatenate(seen)
    assert float(mean) == pytest.approx(pooled.mean(), abs=0.01)
    assert float(variance) ** 0.5 == pytest.approx(pooled.std(), rel=0.05)


def test_empty_batch_leaves_the_statistics_unchanged():
    mean, variance = torch.tensor(0.3), torch.tensor(0.02)
    new_mean, new_variance = momentum_statistics(torch.empty(0), mean, variance, 0.9)
    assert float(new_mean) == pytest.approx(0.3) and float(new_variance) == pytest.approx(0.02)


def _gradcheck(function, *inputs):
    inputs = tuple(x.double().requires_grad_() for x in inputs)
    assert torch.autograd.gradcheck(function, inputs, eps=1e-6, atol=1e-5)


def test_gradient_of_the_separation_term_matches_finite_differences():
    torch.manual_seed(0)
    features, labels = torch.randn(8, 4), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    mean, variance = torch.tensor(0.5, dtype=torch.float64), torch.tensor(1 / 6, dtype=torch.float64)

    def separation(f):
        pos, neg = pair_distances(f, labels)
        mu_pos, _ = momentum_statistics(pos, mean, variance, 0.9)
        mu_neg, _ = momentum_statistics(neg, mean, variance, 0.9)
        return separation_loss(mu_pos, mu_neg)

    _gradcheck(separation, features)


def test_gradient_of_the_sharpness_term_matches_finite_differences():
    torch.manual_seed(1)
    features, labels = torch.randn(8, 4), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    mean, variance = torch.tensor(0.7, dtype=torch.float64), torch.tensor(0.05, dtype=torch.float64)

    def sharpness(f):
        pos, neg = pair_distances(f, labels)
        return sharpness_loss(momentum_statistics(pos, mean, variance, 0.9)[1], momentum_statistics(neg, mean, variance, 0.9)[1])

    _gradcheck(sharpness, features)


def test_gradient_of_the_hard_mining_term_matches_finite_differences():
    torch.manual_seed(2)
    features, labels = torch.randn(8, 4), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    pos, neg = pair_distances(features.double(), labels)
    # thresholds between pairs (not on one), so finite differences never cross a selection boundary
    t_pos = torch.tensor(float(pos.median()) + 1e-3, dtype=torch.float64)
    t_neg = torch.tensor(float(neg.median()) + 1e-3, dtype=torch.float64)

    def hard(f):
        p, n = pair_distances(f, labels)
        return hard_mining_loss(p, n, t_pos, t_neg)

    _gradcheck(hard, features)


def test_hard_mining_loss_equals_the_hinge_on_the_tail_pairs():
    positive = torch.tensor([0.2, 0.6, 0.9])
    negative = torch.tensor([0.5, 1.1, 1.4])
    loss = hard_mining_loss(positive, negative, torch.tensor(0.5), torch.tensor(1.2))
    expected = ((0.6 - 0.5) + (0.9 - 0.5)) / 2 + ((1.2 - 0.5) + (1.2 - 1.1)) / 2
    assert float(loss) == pytest.approx(expected)
    assert float(hard_mining_loss(positive, negative, torch.tensor(2.0), torch.tensor(0.0))) == 0.0


def test_hard_thresholds_follow_the_chosen_rule():
    term = gds(hard_mining=True, hard_sigma=2.0)
    term.mean.copy_(torch.tensor([0.4, 1.2]))
    term.variance.copy_(torch.tensor([0.01, 0.04]))
    assert [round(float(t), 6) for t in term.hard_thresholds()] == [0.6, 0.8]  # μ+ + 2σ+, μ− − 2σ−
    term = gds(hard_mining=True, hard_sigma=2.0, hard_rule="overlap")
    term.mean.copy_(torch.tensor([0.4, 1.2]))
    term.variance.copy_(torch.tensor([0.01, 0.04]))
    assert [round(float(t), 6) for t in term.hard_thresholds()] == [0.8, 0.6]  # μ− − 2σ−, μ+ + 2σ+


def test_loss_term_pulls_positives_together_and_pushes_negatives_apart_on_a_toy_problem():
    torch.manual_seed(0)
    labels = torch.arange(6).repeat_interleave(4)
    features = torch.nn.Parameter(torch.randn(24, 8))
    term = gds(hard_mining=True)
    # the gradient reaches the pairs through the batch share (1 − β) of the statistics: a large step
    optimizer = torch.optim.SGD([features], lr=5.0)

    def gap():
        pos, neg = pair_distances(features.detach(), labels)
        return float(pos.mean()), float(neg.mean())

    pos_before, neg_before = gap()
    for _ in range(300):
        losses = term(features, labels)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    pos_after, neg_after = gap()
    assert pos_before > 1.3 and neg_before < 1.4
    assert pos_after < 0.05  # every identity collapses to a point ...
    # ... and the six points spread to a regular simplex, the widest equal spacing of 6 unit vectors
    assert neg_after == pytest.approx((2 + 2 / 5) ** 0.5, abs=0.01)
    figures = term.figures()
    assert figures["gds_mean_pos"] < figures["gds_mean_neg"]
    assert figures["gds_tail_pos"] == pytest.approx(figures["gds_mean_pos"] + 3 * figures["gds_std_pos"], abs=1e-4)


def test_statistics_are_only_updated_in_training_mode():
    torch.manual_seed(0)
    term = gds()
    features, labels = torch.randn(8, 4), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    term.eval()
    term(features, labels)
    assert term.mean.tolist() == pytest.approx([0.5, 0.5])
    term.train()
    term(features, labels)
    pos, neg = pair_distances(features, labels)
    assert term.mean.tolist() == pytest.approx([0.9 * 0.5 + 0.1 * float(pos.mean()), 0.9 * 0.5 + 0.1 * float(neg.mean())])


@pytest.mark.parametrize("labels", [torch.arange(6), torch.zeros(6, dtype=torch.long)], ids=["no-positive", "no-negative"])
@pytest.mark.parametrize("gradient", ["updated", "batch"])
def test_batches_without_positive_or_negative_pairs_give_finite_losses_and_gradients(labels, gradient):
    torch.manual_seed(0)
    features = torch.randn(6, 4, requires_grad=True)
    term = gds(hard_mining=True, gradient=gradient)
    losses = term(features, labels)
    total = sum(losses.values())
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(features.grad).all()
    assert torch.isfinite(term.mean).all() and torch.isfinite(term.variance).all()


def test_a_single_image_batch_has_no_pair_and_a_zero_loss_with_a_graph():
    features = torch.randn(1, 4, requires_grad=True)
    term = gds(hard_mining=True, lambda_sigma=0.0)
    losses = term(features, torch.tensor([3]))
    sum(losses.values()).backward()
    assert features.grad is not None and float(features.grad.abs().sum()) == 0.0
    assert term.mean.tolist() == pytest.approx([0.5, 0.5])


@pytest.mark.parametrize("key,value,message", [
    ("distance", "manhattan", "gds.distance must be 'euclidean' or 'cosine', got 'manhattan'"),
    ("momentum", 1.0, r"gds.momentum must be in \[0, 1\), got 1"),
    ("hard_rule", "both", "gds.hard_rule must be 'tail' or 'overlap', got 'both'"),
    ("lambda_hard", -1.0, "gds.lambda_hard must be >= 0, got -1"),
])
def test_bad_options_are_named(key, value, message):
    with pytest.raises(ConfigError, match=message):
        gds(**{key: value})
