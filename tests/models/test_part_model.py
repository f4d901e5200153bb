"""PartReidModel: the global branch is ReidModel's, the parts match a hand computation, and the
weights export to / import from a plain ReidModel."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from uda_reid.errors import ConfigError
from uda_reid.models.part_model import (
    PART_KEY_PREFIXES,
    PartReidModel,
    part_model_to_plain,
)
from uda_reid.models.reid_model import ReidModel

IMAGES = torch.randn(6, 3, 32, 16, generator=torch.Generator().manual_seed(0))


def tiny_part_model(num_classes: int = 4, num_parts: int = 3, **kwargs) -> PartReidModel:
    torch.manual_seed(1)
    return PartReidModel("resnet18", num_classes=num_classes, num_parts=num_parts, **kwargs)


def stripes_by_hand(feature_map: torch.Tensor, num_parts: int) -> torch.Tensor:
    """Adaptive average pooling to P×1 written out: stripe n covers rows floor(nh/P) .. ceil((n+1)h/P)."""
    height = feature_map.shape[2]
    stripes = []
    for n in range(num_parts):
        top, bottom = math.floor(n * height / num_parts), math.ceil((n + 1) * height / num_parts)
        stripes.append(feature_map[:, :, top:bottom, :].mean(dim=(2, 3)))
    return torch.stack(stripes)  # P×N×C


def batchnorm_by_hand(x: torch.Tensor, neck, *, training: bool) -> torch.Tensor:
    if training:
        mean, var = x.mean(dim=0), x.var(dim=0, unbiased=False)
    else:
        mean, var = neck.running_mean, neck.running_var
    return (x - mean) / torch.sqrt(var + neck.eps) * neck.weight + neck.bias


def test_train_forward_global_is_reid_model_and_parts_match_hand_computation() -> None:
    model = tiny_part_model(num_classes=4, num_parts=3).train()
    with torch.no_grad():  # distinct part neck weights, so a mix-up of parts would show
        for n, neck in enumerate(model.part_necks):
            neck.weight.fill_(1.0 + n)
    plain = ReidModel("resnet18", num_classes=4)
    plain.load_state_dict(part_model_to_plain(model.state_dict()))
    plain.train()
    with torch.no_grad():
        output = model(IMAGES)
        reference = plain(IMAGES)
        feature_map = model.feature_map(IMAGES)
    torch.testing.assert_close(output.pooled, reference.pooled)
    torch.testing.assert_close(output.features, reference.features)
    torch.testing.assert_close(output.logits, reference.logits)

    expected_pooled = stripes_by_hand(feature_map, 3)
    torch.testing.assert_close(output.part_pooled, expected_pooled)
    for n in range(3):
        expected = batchnorm_by_hand(expected_pooled[n], model.part_necks[n], training=True)
        torch.testing.assert_close(output.part_features[n], expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(output.part_logits[n], output.part_features[n] @ model.part_classifiers[n].weight.t())


def test_eval_forward_is_the_plain_models_and_forward_all_adds_parts() -> None:
    model = tiny_part_model().train()
    with torch.no_grad():
        model(IMAGES)  # move the running statistics away from their initial values
        model(IMAGES * 0.5 + 1.0)
    model.eval()
    plain = ReidModel("resnet18", num_classes=4).eval()
    plain.load_state_dict(part_model_to_plain(model.state_dict()))
    with torch.no_grad():
        eval_output = model(IMAGES)
        global_features, part_features = model.forward_all(IMAGES)
        stripes = stripes_by_hand(model.feature_map(IMAGES), 3)
    torch.testing.assert_close(eval_output, plain(IMAGES).detach())
    torch.testing.assert_close(global_features, eval_output)
    for n in range(3):
        expected = F.normalize(batchnorm_by_hand(stripes[n], model.part_necks[n], training=False), dim=1)
        torch.testing.assert_close(part_features[n], expected, rtol=1e-4, atol=1e-5)


def test_state_dict_exports_to_plain_model_dropping_only_part_keys() -> None:
    model = tiny_part_model(num_classes=4)
    state = model.state_dict()
    part_keys = {key for key in state if key.startswith(PART_KEY_PREFIXES)}
    assert part_keys and all(key.startswith(("part_necks.", "part_classifiers.")) for key in part_keys)

    plain = ReidModel("resnet18", num_classes=4)
    result = plain.load_state_dict(state, strict=False)
    assert result.missing_keys == []
    assert set(result.unexpected_keys) == part_keys

    exported = part_model_to_plain(state)
    assert set(exported) == set(state) - part_keys
    ReidModel("resnet18", num_classes=4).load_state_dict(exported)  # strict
    without_head = part_model_to_plain(state, drop_classifier=True)
    ReidModel("resnet18", num_classes=0).load_state_dict(without_head)  # strict, no classifier
    assert "classifier.weight" in state  # the input mapping is not modified


def test_from_reid_model_copies_the_plain_model_and_leaves_it_unchanged() -> None:
    torch.manual_seed(3)
    plain = ReidModel("resnet18", num_classes=0, pooling="gem", extra_bn=True).eval()
    before = {key: value.clone() for key, value in plain.state_dict().items()}
    part_model = PartReidModel.from_reid_model(plain, num_parts=2)
    assert part_model.num_parts == 2 and not part_model.training
    assert part_model.extra_bn is not None and type(part_model.pooling) is type(plain.pooling)
    with torch.no_grad():
        torch.testing.assert_close(part_model(IMAGES), plain(IMAGES))
    for key, value in plain.state_dict().items():
        assert torch.equal(value, before[key])
    with pytest.raises(TypeError, match="plain ReidModel"):
        PartReidModel.from_reid_model(part_model)


def test_classifiers_from_clusters_are_normalised_centroids_of_clustered_samples() -> None:
    model = tiny_part_model(num_classes=0, num_parts=2)
    generator = torch.Generator().manual_seed(5)
    global_features = torch.randn(7, model.feature_dim, generator=generator)
    part_features = torch.randn(2, 7, model.part_feature_dim, generator=generator)
    labels = np.array([1, 0, -1, 1, 2, 0, -1])
    before = (global_features.clone(), part_features.clone(), labels.copy())

    assert model.reset_classifiers_from_clusters(global_features, part_features, labels) == 3

    def centroid(features: torch.Tensor, label: int) -> torch.Tensor:
        members = [F.normalize(features[i], dim=0) for i in range(7) if labels[i] == label]
        return F.normalize(torch.stack(members).mean(dim=0), dim=0)

    for label in range(3):
        torch.testing.assert_close(model.classifier.weight[label], centroid(global_features, label))
        for n in range(2):
            torch.testing.assert_close(model.part_classifiers[n].weight[label], centroid(part_features[n], label))
    assert torch.equal(global_features, before[0]) and torch.equal(part_features, before[1])
    assert np.array_equal(labels, before[2])
    assert len(model.classifier_parameters()) == 3
    # gradients reach backbone, part necks and classifiers, and are finite
    output = model.train()(IMAGES)
    loss = output.logits.logsumexp(dim=1).sum() + output.part_logits.logsumexp(dim=2).sum()
    loss.backward()
    for parameter in [model.backbone.conv1.weight, model.part_necks[1].weight, *model.classifier_parameters()]:
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all() and parameter.grad.abs().sum() > 0
    # no cluster at all: the heads go away and the forward still runs
    assert model.reset_classifiers_from_clusters(global_features, part_features, np.full(7, -1)) == 0
    output = model(IMAGES)
    assert output.logits is None and output.part_logits is None and model.classifier_parameters() == []


def test_bad_settings_and_weights_are_named() -> None:
    with pytest.raises(ConfigError, match="num_parts must be an integer >= 1"):
        PartReidModel("resnet18", num_parts=0)
    model = tiny_part_model(num_classes=0, num_parts=2)
    with pytest.raises(ConfigError, match=r"one K×C matrix per part \(2 parts\), got 3"):
        model.reset_classifiers(4, part_weights=torch.zeros(3, 4, model.part_feature_dim))
    with pytest.raises(ConfigError, match=r"part 1 must have shape \(4, 512\)"):
        model.reset_classifiers(4, part_weights=[torch.zeros(4, 512), torch.zeros(4, 8)])
    with pytest.raises(ConfigError, match="num_classes is 0"):
        model.reset_classifiers(0, part_weights=torch.zeros(2, 1, 512))
    assert model.classifier is None and model.part_classifiers is None  # a refused reset changes nothing


def test_a_mid_run_state_with_heads_loads_into_a_fresh_model() -> None:
    trained = tiny_part_model(num_classes=5, num_parts=2).eval()
    fresh = PartReidModel("resnet18", num_classes=0, num_parts=2).eval()
    fresh.load_state_dict(trained.state_dict())  # strict: the heads take the saved 5 classes
    assert fresh.num_classes == 5 and all(head.out_features == 5 for head in fresh.part_classifiers)
    for key, value in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    with pytest.raises(RuntimeError, match="part_classifiers.1.weight"):  # inconsistent heads stay an error
        broken = dict(trained.state_dict())
        broken["part_classifiers.1.weight"] = torch.zeros(3, 512)
        PartReidModel("resnet18", num_classes=0, num_parts=2).load_state_dict(broken)
