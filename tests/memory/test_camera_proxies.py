"""CameraProxies against hand computations with explicit loops (numpy) on a tiny 3-camera example.

Clusters: label 0 seen by cameras 0 and 1, label 1 by cameras 1 and 2, label 2 by camera 0 only,
label 3 by camera 2 only; one outlier (−1).
"""

import math

import numpy as np
import pytest
import torch

from uda_reid.memory.camera_proxies import CameraProxies

TAU = 0.07

FEATURES = np.array(
    [
        [1.0, 0.1, 0.0],
        [0.9, 0.3, 0.1],
        [0.8, -0.2, 0.3],
        [0.1, 1.0, 0.2],
        [-0.2, 0.9, 0.4],
        [0.3, 0.2, 1.0],
        [0.5, 0.1, 0.9],
        [-1.0, 0.2, 0.1],
        [0.2, -0.8, 0.5],
        [0.4, 0.4, -0.9],
    ]
)
LABELS = np.array([0, 0, 0, 1, 1, 2, 2, -1, 3, 0])
CAMERAS = np.array([0, 0, 1, 1, 2, 0, 0, 2, 2, 1])

# A batch: features that are not the bank's own, every label present, both kinds of single-camera cluster.
BATCH = np.array([[0.7, 0.5, 0.2], [0.1, 0.8, -0.3], [0.6, 0.0, 0.8], [0.3, -0.9, 0.1], [0.9, -0.1, -0.4], [0.2, 0.6, 0.6]])
BATCH_LABELS = np.array([0, 1, 2, 3, 0, 1])
BATCH_CAMERAS = np.array([1, 2, 0, 2, 0, 1])


def unit(vectors) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def proxies_by_hand() -> dict[tuple[int, int], np.ndarray]:
    groups: dict[tuple[int, int], list[np.ndarray]] = {}
    for feature, label, camera in zip(unit(FEATURES), LABELS, CAMERAS):
        if label >= 0:
            groups.setdefault((int(label), int(camera)), []).append(feature)
    return {pair: unit(np.mean(members, axis=0)) for pair, members in sorted(groups.items())}


def built_bank(dtype=torch.float64) -> CameraProxies:
    bank = CameraProxies(3).to(dtype)
    return bank.build(torch.tensor(FEATURES, dtype=dtype), torch.tensor(LABELS), torch.tensor(CAMERAS))


def contrastive_by_hand(sims: dict, positives: list, negatives: list, num_hard: int) -> float:
    """−(1/|P|)·Σ_p log softmax over P ∪ (the num_hard most similar negatives) of sim/τ."""
    hard = sorted(negatives, key=lambda pair: -sims[pair])[:num_hard]
    chosen = positives + hard
    log_normalizer = math.log(sum(math.exp(sims[pair] / TAU) for pair in chosen))
    return sum(log_normalizer - sims[pair] / TAU for pair in positives) / len(positives)


def similarities(feature: np.ndarray, proxies: dict) -> dict:
    return {pair: float(unit(feature) @ proxy) for pair, proxy in proxies.items()}


def test_proxies_are_per_camera_centroids_and_samples_map_to_them() -> None:
    features = torch.tensor(FEATURES)
    labels, cameras = torch.tensor(LABELS), torch.tensor(CAMERAS)
    bank = CameraProxies(3).double().build(features, labels, cameras)
    expected = proxies_by_hand()
    assert list(zip(bank.proxy_labels.tolist(), bank.proxy_cameras.tolist())) == list(expected)
    torch.testing.assert_close(bank.proxies, torch.tensor(np.stack(list(expected.values()))))
    pairs = list(expected)
    for i, (label, camera) in enumerate(zip(LABELS, CAMERAS)):
        row = bank.sample_proxy[i].item()
        assert row == (-1 if label < 0 else pairs.index((label, camera)))
    assert torch.equal(features, torch.tensor(FEATURES))  # inputs not modified
    assert torch.equal(labels, torch.tensor(LABELS)) and torch.equal(cameras, torch.tensor(CAMERAS))
    assert bank.proxy_index(torch.tensor([3, 0]), torch.tensor([2, 1])).tolist() == [pairs.index((3, 2)), pairs.index((0, 1))]


def test_intra_camera_loss_is_sum_over_cameras_of_mean_cross_entropy_within_the_camera() -> None:
    bank = built_bank()
    proxies = proxies_by_hand()
    loss = bank.intra_camera_loss(torch.tensor(BATCH), torch.tensor(BATCH_LABELS), torch.tensor(BATCH_CAMERAS))
    expected = 0.0
    for camera in sorted(set(BATCH_CAMERAS.tolist())):
        terms = []
        for feature, label, cam in zip(BATCH, BATCH_LABELS, BATCH_CAMERAS):
            if cam != camera:
                continue
            sims = {pair: s for pair, s in similarities(feature, proxies).items() if pair[1] == camera}
            log_normalizer = math.log(sum(math.exp(s / TAU) for s in sims.values()))
            terms.append(log_normalizer - sims[(label, camera)] / TAU)
        expected += np.mean(terms)
    assert loss.item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("num_hard", [1, 2, 50])
def test_cap_inter_camera_loss_matches_hand_computation(num_hard) -> None:
    bank = built_bank()
    proxies = proxies_by_hand()
    loss = bank.inter_camera_loss_cap(
        torch.tensor(BATCH), torch.tensor(BATCH_LABELS), torch.tensor(BATCH_CAMERAS), num_hard_negatives=num_hard
    )
    per_camera: dict[int, list[float]] = {}
    for feature, label, camera in zip(BATCH, BATCH_LABELS, BATCH_CAMERAS):
        sims = similarities(feature, proxies)
        positives = [pair for pair in proxies if pair[0] == label]
        negatives = [pair for pair in proxies if pair[0] != label]
        per_camera.setdefault(int(camera), []).append(contrastive_by_hand(sims, positives, negatives, num_hard))
    expected = sum(np.mean(terms) for terms in per_camera.values())
    assert loss.item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("num_hard", [1, 2, 50])
def test_pplr_inter_camera_loss_matches_hand_computation(num_hard) -> None:
    bank = built_bank()
    proxies = proxies_by_hand()
    loss = bank.inter_camera_loss_pplr(
        torch.tensor(BATCH), torch.tensor(BATCH_LABELS), torch.tensor(BATCH_CAMERAS), num_hard_negatives=num_hard
    )
    total, skipped = 0.0, 0
    for feature, label, camera in zip(BATCH, BATCH_LABELS, BATCH_CAMERAS):
        sims = similarities(feature, proxies)
        positives = [pair for pair in proxies if pair[0] == label and pair[1] != camera]
        negatives = [pair for pair in proxies if pair[0] != label]
        if not positives:  # labels 2 and 3 are seen by one camera only
            skipped += 1
            continue
        total += contrastive_by_hand(sims, positives, negatives, num_hard)
    assert skipped == 2
    assert loss.item() == pytest.approx(total / len(BATCH), rel=1e-10)


def test_single_camera_clusters_give_finite_losses_and_gradients() -> None:
    bank = built_bank()
    features = torch.tensor(BATCH, requires_grad=True)
    labels, cameras = torch.tensor(BATCH_LABELS), torch.tensor(BATCH_CAMERAS)
    total = (
        bank.intra_camera_loss(features, labels, cameras)
        + bank.inter_camera_loss_cap(features, labels, cameras)
        + bank.inter_camera_loss_pplr(features, labels, cameras)
    )
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(features.grad).all() and features.grad.abs().sum() > 0
    assert torch.autograd.gradcheck(lambda x: bank.intra_camera_loss(x, labels, cameras), (features.detach().requires_grad_(),))

    # a batch of single-camera clusters only: PPLR's loss is zero but still backpropagates
    only_single = torch.tensor(BATCH[[2, 3]], requires_grad=True)
    pplr = bank.inter_camera_loss_pplr(only_single, torch.tensor([2, 3]), torch.tensor([0, 2]))
    assert pplr.item() == 0.0 and pplr.requires_grad
    pplr.backward()
    assert torch.equal(only_single.grad, torch.zeros_like(only_single))
    cap = bank.inter_camera_loss_cap(only_single, torch.tensor([2, 3]), torch.tensor([0, 2]))
    assert torch.isfinite(cap) and cap.item() > 0


def test_momentum_update_applies_samples_in_order_and_keeps_inputs() -> None:
    bank = built_bank()
    proxies = proxies_by_hand()
    pairs = list(proxies)
    features = torch.tensor([[1.0, 1.0, 0.0], [0.0, -2.0, 1.0], [3.0, 0.0, 1.0]], dtype=torch.float64)
    before = features.clone()
    labels, cameras = [0, 1, 0], [1, 2, 1]  # proxy (0, 1) moves twice: sample 0, then sample 2
    bank.momentum_update(features, torch.tensor(labels), torch.tensor(cameras), momentum=0.2)
    expected = {pair: proxy.copy() for pair, proxy in proxies.items()}
    for feature, label, camera in zip(unit(before.numpy()), labels, cameras):
        expected[(label, camera)] = unit(0.2 * expected[(label, camera)] + 0.8 * feature)
    torch.testing.assert_close(bank.proxies, torch.tensor(np.stack([expected[pair] for pair in pairs])))
    assert torch.equal(features, before)


def test_update_before_backward_is_refused_by_autograd() -> None:
    bank = built_bank()
    features = torch.tensor(BATCH, requires_grad=True)
    loss = bank.intra_camera_loss(features, torch.tensor(BATCH_LABELS), torch.tensor(BATCH_CAMERAS))
    bank.momentum_update(features, torch.tensor(BATCH_LABELS), torch.tensor(BATCH_CAMERAS))
    with pytest.raises(RuntimeError, match="inplace"):
        loss.backward()


def test_state_dict_restores_a_bank_of_another_size() -> None:
    bank = built_bank(torch.float32)
    bank.momentum_update(torch.tensor([[1.0, 1.0, 1.0]]), torch.tensor([1]), torch.tensor([2]))
    state = bank.state_dict()
    fresh = CameraProxies(3)  # empty bank
    fresh.load_state_dict(state)
    smaller = CameraProxies(3).build(torch.randn(4, 3), torch.tensor([0, 0, 1, -1]), torch.tensor([0, 1, 1, 0]))
    smaller.load_state_dict(state)
    features = torch.tensor(BATCH, dtype=torch.float32)
    labels, cameras = torch.tensor(BATCH_LABELS), torch.tensor(BATCH_CAMERAS)
    for restored in (fresh, smaller):
        for name in ("proxies", "proxy_labels", "proxy_cameras", "sample_proxy"):
            assert torch.equal(getattr(restored, name), getattr(bank, name)), name
        assert restored.inter_camera_loss_cap(features, labels, cameras) == bank.inter_camera_loss_cap(features, labels, cameras)
    with pytest.raises(RuntimeError, match="size mismatch"):
        CameraProxies(4).load_state_dict(state)


def test_unknown_pairs_and_bad_shapes_are_named() -> None:
    bank = built_bank()
    features = torch.tensor(BATCH[:2])
    with pytest.raises(ValueError, match=r"no proxy for \(label, camera\) pair\(s\) \[\(-1, 2\)\]"):
        bank.intra_camera_loss(features, torch.tensor([0, -1]), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"no proxy for \(label, camera\) pair\(s\) \[\(2, 1\)\]"):
        bank.inter_camera_loss_pplr(features, torch.tensor([0, 2]), torch.tensor([1, 1]))
    with pytest.raises(ValueError, match=r"one label and camera per feature row \(2\), got 3"):
        bank.inter_camera_loss_cap(features, torch.tensor([0, 0, 0]), torch.tensor([0, 0, 0]))
    with pytest.raises(ValueError, match="features must be N×3"):
        bank.intra_camera_loss(torch.zeros(2, 4), torch.tensor([0, 0]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="bank is empty"):
        CameraProxies(3).intra_camera_loss(features, torch.tensor([0, 0]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="momentum must be in"):
        bank.momentum_update(features, torch.tensor([0, 0]), torch.tensor([0, 0]), momentum=1.0)
