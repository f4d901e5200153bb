import torch
import torch.nn.functional as F

from uda_reid.losses import batch_hard_triplet_loss, pairwise_euclidean


def test_pairwise_euclidean_matches_torch_cdist():
    x = torch.randn(7, 5, dtype=torch.float64)
    torch.testing.assert_close(pairwise_euclidean(x), torch.cdist(x, x), atol=1e-6, rtol=0)


def test_batch_hard_triplet_hand_computation():
    # 1-D features: ids A = {0, 1}, B = {3, 7}
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1])
    # hardest positive / negative per anchor: (1, 3), (1, 2), (4, 2), (4, 6)
    gaps = torch.tensor([1 - 3, 1 - 2, 4 - 2, 4 - 6], dtype=torch.float64)
    torch.testing.assert_close(batch_hard_triplet_loss(x, y, margin=0.5), F.relu(gaps + 0.5).mean())
    torch.testing.assert_close(batch_hard_triplet_loss(x, y, margin=0.0), F.softplus(gaps).mean())


def test_anchors_without_positive_are_ignored_and_empty_case_has_graph():
    x = torch.tensor([[0.0], [1.0], [5.0]], requires_grad=True)
    loss = batch_hard_triplet_loss(x, torch.tensor([0, 0, 1]), margin=1.0)
    # only anchors 0 and 1 count: gaps (1-5, 1-4)
    assert abs(loss.item() - 0.0) < 1e-6
    lone = batch_hard_triplet_loss(x, torch.tensor([0, 1, 2]), margin=1.0)
    lone.backward()
    assert lone.item() == 0.0 and x.grad is not None
