"""HybridMemory against hand computations with explicit loops (numpy), on a 5-row, D=2 bank."""

import math

import numpy as np
import pytest
import torch

from uda_reid.memory import HybridMemory, class_centroids

TAU = 0.05


def unit(vectors) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


ROWS = unit([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.2], [0.3, -0.9]])
INPUTS = np.array([[2.0, 0.5], [-0.4, 1.0], [0.1, -0.3]])


def reference_loss(rows: np.ndarray, labels: list[int], inputs: np.ndarray, indexes: list[int]) -> float:
    """SpCL's loss with loops: class score = mean member logit, softmax over the classes that have rows."""
    classes = sorted(set(labels))
    total = 0.0
    for x, index in zip(unit(inputs), indexes):
        scores = {}
        for c in classes:
            members = [r for r in range(len(labels)) if labels[r] == c]
            scores[c] = sum(float(x @ rows[r]) / TAU for r in members) / len(members)
        log_normalizer = math.log(sum(math.exp(s) for s in scores.values()))
        total += -(scores[labels[index]] - log_normalizer)
    return total / len(indexes)


def make_memory(labels, dtype=torch.float32) -> HybridMemory:
    memory = HybridMemory(2, 5, temperature=TAU, momentum=0.2).to(dtype)
    memory.initialize(torch.tensor(ROWS * 3.0, dtype=dtype), torch.tensor(labels))  # scaled: normalised inside
    return memory


def test_loss_matches_a_hand_computation() -> None:
    labels = [0, 1, 1, 2, 1]  # class 1 = a cluster of rows 1, 2, 4
    memory = make_memory(labels)
    inputs = torch.tensor(INPUTS, dtype=torch.float32)
    loss = memory.loss(inputs, torch.tensor([0, 2, 4]))
    expected = reference_loss(ROWS, labels, INPUTS, [0, 2, 4])
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    torch.testing.assert_close(memory.features, torch.tensor(ROWS, dtype=torch.float32))


def test_class_without_rows_gets_no_probability() -> None:
    # label ids 1 and 3 have no rows; the loss must equal the one over the three classes that exist
    labels = [0, 2, 2, 4, 2]
    memory = make_memory(labels)
    inputs = torch.tensor(INPUTS, dtype=torch.float32, requires_grad=True)
    probabilities = memory.log_probabilities(inputs).exp()
    assert probabilities.shape == (3, 5)
    assert torch.all(probabilities[:, [1, 3]] == 0)
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(3))
    loss = memory.loss(inputs, torch.tensor([0, 2, 3]))
    assert loss.item() == pytest.approx(reference_loss(ROWS, labels, INPUTS, [0, 2, 3]), rel=1e-5)
    loss.backward()  # -inf scores must not turn into NaN gradients
    assert torch.isfinite(inputs.grad).all()


def test_gradient_reaches_inputs_only_and_matches_finite_differences() -> None:
    memory = make_memory([0, 1, 1, 2, 1], dtype=torch.float64)
    inputs = torch.tensor(INPUTS, dtype=torch.float64, requires_grad=True)
    indexes = torch.tensor([0, 2, 3])
    assert torch.autograd.gradcheck(lambda x: memory.loss(x, indexes), (inputs,))
    memory.loss(inputs, indexes).backward()
    assert inputs.grad is not None and inputs.grad.abs().sum() > 0
    assert not memory.features.requires_grad and memory.features.grad is None
    assert list(memory.parameters()) == []


def test_update_applies_duplicates_in_order() -> None:
    memory = make_memory([0, 1, 1, 2, 1])
    inputs = np.array([[1.0, 1.0], [0.0, -2.0], [3.0, 0.0]])
    indexes = [1, 3, 1]  # row 1 updated twice: first with sample 0, then with sample 2
    inputs_before = torch.tensor(inputs, dtype=torch.float32)
    inputs_tensor = inputs_before.clone()
    memory.update(inputs_tensor, torch.tensor(indexes))

    expected = ROWS.copy()
    for x, row in zip(unit(inputs), indexes):
        expected[row] = unit(0.2 * expected[row] + 0.8 * x)
    torch.testing.assert_close(memory.features, torch.tensor(expected, dtype=torch.float32))
    assert torch.equal(inputs_tensor, inputs_before)
    # order matters: applying sample 2 before sample 0 gives a different row 1
    reversed_row = unit(0.2 * unit(0.2 * ROWS[1] + 0.8 * unit(inputs[2])) + 0.8 * unit(inputs[0]))
    assert not np.allclose(reversed_row, expected[1], atol=1e-3)


def test_update_before_backward_is_refused_by_autograd() -> None:
    memory = make_memory([0, 1, 1, 2, 1])
    inputs = torch.tensor(INPUTS, dtype=torch.float32, requires_grad=True)
    loss = memory.loss(inputs, torch.tensor([0, 1, 2]))
    memory.update(inputs, torch.tensor([0, 1, 2]))
    with pytest.raises(RuntimeError, match="inplace"):
        loss.backward()


def test_set_labels_validates_and_inputs_are_not_modified() -> None:
    memory = HybridMemory(2, 5)
    features = torch.tensor(ROWS * 3.0, dtype=torch.float32)
    features_before = features.clone()
    labels = torch.tensor([0, 1, 1, 2, 1])
    memory.initialize(features, labels)
    assert torch.equal(features, features_before)
    labels[0] = 7
    assert memory.labels[0] == 0  # a copy was stored
    with pytest.raises(ValueError, match="expected 5 labels"):
        memory.set_labels(torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=">= 0"):
        memory.set_labels(torch.tensor([0, 1, -1, 2, 3]))
    with pytest.raises(ValueError, match="integers"):
        memory.set_labels(torch.zeros(5))
    with pytest.raises(ValueError, match=r"5×2"):
        memory.initialize(torch.zeros(4, 2), torch.arange(4))
    with pytest.raises(ValueError, match=r"row indexes must be in 0..4, got 0..5"):
        memory.loss(torch.zeros(2, 2), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="one row index per input"):
        memory.update(torch.zeros(2, 2), torch.tensor([0]))
    memory.set_labels(np.array([4, 3, 2, 1, 0]))
    assert memory.labels.tolist() == [4, 3, 2, 1, 0]


def test_state_dict_round_trip_restores_features_and_labels() -> None:
    memory = make_memory([0, 1, 1, 2, 1])
    memory.update(torch.tensor([[1.0, 1.0]]), torch.tensor([2]))
    restored = HybridMemory(2, 5, temperature=TAU)
    restored.load_state_dict(memory.state_dict())
    assert torch.equal(restored.features, memory.features)
    assert torch.equal(restored.labels, memory.labels)
    inputs = torch.tensor(INPUTS, dtype=torch.float32)
    assert restored.loss(inputs, torch.tensor([0, 1, 2])) == memory.loss(inputs, torch.tensor([0, 1, 2]))


def test_class_centroids_are_normalised_means_of_normalised_features() -> None:
    features = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, -3.0], [1.0, 1.0]])
    centroids = class_centroids(features, torch.tensor([0, 0, 1, 1]))
    expected = torch.tensor(unit([[0.5, 0.5], unit([[0.0, -1.0], [1.0, 1.0]]).mean(axis=0)]), dtype=torch.float32)
    torch.testing.assert_close(centroids, expected)
    with pytest.raises(ValueError, match=r"no sample has label\(s\) \[1\]"):
        class_centroids(features, torch.tensor([0, 0, 2, 2]))
