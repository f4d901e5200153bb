"""Pre-training losses against hand computations on tiny tensors."""

import math

import pytest
import torch
import torch.nn.functional as F

from uda_reid.losses.contrastive import (consistency_loss, gaussian_mmd, info_nce, linear_mmd,
                                         multi_positive_info_nce)


def unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float64), dim=1)


def test_info_nce_is_minus_log_the_positive_share_against_the_queue():
    query, positive = unit([1.0, 0.0], [0.0, 1.0]), unit([0.6, 0.8], [0.8, 0.6])
    queue = unit([1.0, 1.0], [-1.0, 0.0], [0.0, -1.0])
    tau = 0.1
    expected = []
    for q, k in zip(query.tolist(), positive.tolist()):
        dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
        numerator = math.exp(dot(q, k) / tau)
        expected.append(-math.log(numerator / (numerator + sum(math.exp(dot(q, n) / tau) for n in queue.tolist()))))
    assert info_nce(query, positive, queue, tau).item() == pytest.approx(sum(expected) / 2, rel=1e-12)


def test_patch_nce_puts_both_positives_in_the_numerator():
    query = unit([1.0, 0.2])
    positives = unit([0.9, 0.1], [0.2, 1.0]).unsqueeze(0)  # 1×2×2
    queue = unit([-1.0, 0.3], [0.1, -1.0])
    tau = 0.1
    q = query[0].tolist()
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    top = sum(math.exp(dot(q, p) / tau) for p in positives[0].tolist())
    bottom = top + sum(math.exp(dot(q, n) / tau) for n in queue.tolist())
    assert multi_positive_info_nce(query, positives, queue, tau).item() == pytest.approx(-math.log(top / bottom), rel=1e-12)
    # With one positive it is MoCo's InfoNCE.
    single = multi_positive_info_nce(query, positives[:, :1], queue, tau)
    assert single.item() == pytest.approx(info_nce(query, positives[:, 0], queue, tau).item(), rel=1e-12)


def test_linear_mmd_is_the_squared_distance_of_the_means():
    x = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    y = torch.tensor([[1.0, 1.0], [1.0, 1.0], [4.0, 1.0]])
    # means (1, 2) and (2, 1): squared distance 2
    assert linear_mmd(x, y).item() == pytest.approx(2.0)


def test_gaussian_mmd_equals_the_kernel_sums_written_out():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([[0.0, 2.0], [1.0, 1.0]], dtype=torch.float64)
    pooled = torch.cat([x, y]).tolist()
    squared = [[sum((a - b) ** 2 for a, b in zip(p, r)) for r in pooled] for p in pooled]
    sigma2 = sum(map(sum, squared)) / (4 * 4 - 4)
    kernel = [[sum(math.exp(-d / (m * sigma2)) for m in (0.25, 0.5, 1.0, 2.0, 4.0)) for d in row] for row in squared]
    xx = sum(kernel[i][j] for i in range(2) for j in range(2)) / 4
    yy = sum(kernel[i][j] for i in range(2, 4) for j in range(2, 4)) / 4
    xy = sum(kernel[i][j] for i in range(2) for j in range(2, 4)) / 4
    assert gaussian_mmd(x, y).item() == pytest.approx(xx + yy - 2 * xy, rel=1e-10)
    assert gaussian_mmd(x, x.clone()).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("estimator", ["gaussian", "linear"])
def test_no_gradient_reaches_the_original_images_branch(estimator):
    torch.manual_seed(0)
    query = F.normalize(torch.randn(6, 4), dim=1).requires_grad_(True)
    key = F.normalize(torch.randn(6, 4), dim=1)
    original_query = F.normalize(torch.randn(6, 4), dim=1).requires_grad_(True)
    original_key = F.normalize(torch.randn(6, 4), dim=1).requires_grad_(True)
    loss = consistency_loss(query, key, original_query, original_key, estimator)
    loss.backward()
    assert loss.item() > 0 and query.grad is not None and query.grad.abs().sum() > 0
    assert original_query.grad is None and original_key.grad is None
    # Its value: the estimator on the two similarity matrices, rows as samples.
    expected = {"gaussian": gaussian_mmd, "linear": linear_mmd}[estimator](query @ key.t(), original_query @ original_key.t())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
