"""Backbones, pooling, BN neck and ReidModel: contracts over the registry plus hand-checked values."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

from uda_reid.errors import ConfigError, UdaReidError, UnknownNameError
from uda_reid.models import (
    BACKBONES,
    BNNeck,
    GeneralizedMeanPooling,
    HorizontalPartPooling,
    ReidModel,
    ReidOutput,
    build_backbone,
    build_pooling,
)
from uda_reid.models.backbones import is_transformer

TINY_IMAGES = (2, 3, 64, 32)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# --- backbones -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BACKBONES.names())
def test_every_backbone_gives_a_map_of_its_channels_and_a_class_token_exactly_when_a_transformer(name: str) -> None:
    backbone = build_backbone(name).eval()
    with torch.no_grad():
        feature_map, token = backbone.features(torch.randn(2, 3, 64, 32))
    assert feature_map.shape[:2] == (2, backbone.out_channels)
    assert (token is not None) == is_transformer(name)
    if token is not None:
        assert token.shape == (2, backbone.out_channels) and feature_map.shape[2:] == (64 // 16, 32 // 16)


@pytest.mark.parametrize("name", [name for name in BACKBONES.names() if hasattr(torchvision.models, name)])
def test_every_torchvision_resnet_keeps_torchvision_names_and_reports_its_channels(name: str) -> None:
    backbone = build_backbone(name).eval()
    reference = getattr(torchvision.models, name)(weights=None)
    expected = {key: value.shape for key, value in reference.state_dict().items() if not key.startswith("fc.")}
    actual = {key: value.shape for key, value in backbone.state_dict().items()}
    assert actual == expected  # same names and shapes: checkpoints map key for key, no fc / avgpool

    with torch.no_grad():
        feature_map = backbone(torch.randn(*TINY_IMAGES))
    assert feature_map.shape[1] == backbone.out_channels == reference.fc.in_features
    assert feature_map.shape[2:] == (64 // 16, 32 // 16)  # last stride 1 by default


def test_backbone_with_last_stride_2_computes_torchvision_resnet_up_to_layer4() -> None:
    backbone = build_backbone("resnet18", last_stride=2).eval()
    reference = torchvision.models.resnet18(weights=None).eval()
    backbone.load_state_dict({k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")})
    images = torch.randn(*TINY_IMAGES)
    with torch.no_grad():
        pooled_reference = torch.flatten(reference.avgpool(backbone(images)), 1)
        logits_reference = reference(images)
    # torchvision's own forward = our map -> avgpool -> fc, so the maps agree.
    torch.testing.assert_close(reference.fc(pooled_reference), logits_reference)


def test_last_stride_1_doubles_the_final_map_without_changing_parameters() -> None:
    images = torch.randn(1, 3, 256, 128)
    stride_1 = build_backbone("resnet18", last_stride=1).eval()
    stride_2 = build_backbone("resnet18", last_stride=2).eval()
    stride_2.load_state_dict(stride_1.state_dict())  # strict: the stride changes no parameter
    with torch.no_grad():
        map_1, map_2 = stride_1(images), stride_2(images)
    assert map_1.shape[2:] == (16, 8)
    assert map_2.shape[2:] == (8, 4)


def test_unknown_backbone_lists_known_names_and_the_option() -> None:
    with pytest.raises(UnknownNameError) as error:
        build_backbone("resnet51")
    message = str(error.value)
    assert "--arch" in message and "resnet51" in message
    assert all(name in message for name in ("resnet18", "resnet50", "resnet101"))
    with pytest.raises(ConfigError, match="last_stride"):
        build_backbone("resnet18", last_stride=4)


# --- pooling --------------------------------------------------------------------------------------


def test_gem_with_p_1_is_average_pooling() -> None:
    feature_map = torch.rand(3, 5, 4, 2) + 0.1
    gem = GeneralizedMeanPooling(p=1.0)
    torch.testing.assert_close(gem(feature_map), F.adaptive_avg_pool2d(feature_map, 1).flatten(1))


def test_gem_matches_a_hand_computation_and_learns_p() -> None:
    feature_map = torch.tensor([1.0, 2.0, 0.0, -4.0]).reshape(1, 1, 2, 2)
    gem = GeneralizedMeanPooling(p=3.0, eps=1e-6)
    # negatives and zeros are clamped to eps, so they contribute ~0 to the cubic mean
    expected = ((1.0 + 8.0 + 2e-18) / 4) ** (1 / 3)
    output = gem(feature_map)
    assert output.item() == pytest.approx(expected, rel=1e-6)
    output.sum().backward()
    assert gem.p.grad is not None and gem.p.grad.item() != 0.0


def test_pooling_by_name_against_torch_reference_ops() -> None:
    feature_map = torch.rand(2, 4, 6, 3) + 0.05
    area = 6 * 3
    references = {
        "avg": F.adaptive_avg_pool2d(feature_map, 1).flatten(1),
        "max": F.adaptive_max_pool2d(feature_map, 1).flatten(1),
        # Lp pooling sums x^p over the window; GeM averages: divide by area^(1/p)
        "gem": F.lp_pool2d(feature_map, 3.0, kernel_size=(6, 3)).flatten(1) / area ** (1 / 3),
    }
    for name, expected in references.items():
        torch.testing.assert_close(build_pooling(name)(feature_map), expected, msg=name)


def test_unknown_pooling_lists_the_valid_ones() -> None:
    with pytest.raises(UdaReidError) as error:
        build_pooling("mean")
    assert all(name in str(error.value) for name in ("avg", "gem", "max", "--pooling"))


def test_horizontal_part_pooling_averages_top_to_bottom_stripes() -> None:
    feature_map = torch.arange(12.0).reshape(1, 1, 6, 2)  # rows [0,1], [2,3], ..., [10,11]
    parts = HorizontalPartPooling(num_parts=3)(feature_map)
    torch.testing.assert_close(parts, torch.tensor([[[1.5, 5.5, 9.5]]]))


# --- BN neck --------------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer_class", [torch.optim.SGD, torch.optim.Adam])
def test_bnneck_bias_stays_zero_after_an_optimizer_step(optimizer_class: type) -> None:
    neck = BNNeck(4)
    optimizer = optimizer_class(neck.parameters(), lr=0.5, weight_decay=5e-4)
    features = torch.randn(8, 4)
    loss = (neck(features) * torch.randn(8, 4)).sum()
    loss.backward()
    optimizer.step()
    assert torch.equal(neck.bias, torch.zeros(4))
    assert not neck.bias.requires_grad
    assert not torch.equal(neck.weight, torch.ones(4))  # the scale did train
    assert "bias" in neck.state_dict()  # kept so SpCL-style checkpoints load


# --- ReidModel ------------------------------------------------------------------------------------


def test_eval_output_is_the_unit_norm_neck_feature() -> None:
    model = ReidModel("resnet18").eval()
    images = torch.randn(*TINY_IMAGES)
    with torch.no_grad():
        output = model(images)
        pooled = model.backbone(images).mean(dim=(2, 3))
        neck = (pooled - model.neck.running_mean) / torch.sqrt(model.neck.running_var + model.neck.eps)
    assert output.shape == (2, 512)
    torch.testing.assert_close(output.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(output, F.normalize(neck, dim=1))


def test_train_output_pooled_neck_and_bias_free_logits() -> None:
    model = ReidModel("resnet18", num_classes=7).train()
    output = model(torch.randn(4, 3, 64, 32))
    assert isinstance(output, ReidOutput)
    assert model.classifier is not None and model.classifier.bias is None
    assert output.logits is not None and output.logits.shape == (4, 7)
    torch.testing.assert_close(output.logits, output.features @ model.classifier.weight.T)
    # features = batch-normalised pooled features (the neck sits between them)
    mean, var = output.pooled.mean(0), output.pooled.var(0, unbiased=False)
    expected = (output.pooled - mean) / torch.sqrt(var + model.neck.eps) * model.neck.weight
    torch.testing.assert_close(output.features, expected, rtol=1e-4, atol=1e-4)


def test_reset_classifier_changes_class_count_and_accepts_initial_weights() -> None:
    model = ReidModel("resnet18", num_classes=3)
    centroids = F.normalize(torch.randn(5, 512), dim=1)
    model.reset_classifier(5, weight=centroids)
    assert model.num_classes == 5
    assert torch.equal(model.classifier.weight, centroids)
    assert model(torch.randn(2, 3, 64, 32)).logits.shape == (2, 5)

    model.reset_classifier(0)
    assert model.classifier is None and model(torch.randn(2, 3, 64, 32)).logits is None
    with pytest.raises(ConfigError, match="shape"):
        model.reset_classifier(4, weight=centroids)


def test_extra_bn_only_when_asked_and_it_normalises_the_map() -> None:
    plain = ReidModel("resnet18")
    assert plain.extra_bn is None
    assert not any(key.startswith("extra_bn.") for key in plain.state_dict())

    model = ReidModel("resnet18", extra_bn=True).eval()
    assert {"extra_bn.weight", "extra_bn.running_mean"} <= set(model.state_dict())
    with torch.no_grad():
        model.extra_bn.running_mean.fill_(0.5)
        model.extra_bn.running_var.fill_(4.0)
        images = torch.randn(*TINY_IMAGES)
        expected = (model.backbone(images) - 0.5) / torch.sqrt(torch.tensor(4.0 + model.extra_bn.eps))
        torch.testing.assert_close(model.feature_map(images), expected)


def test_embedding_and_gem_options() -> None:
    model = ReidModel("resnet18", embedding_dim=64, pooling="gem", neck=False).eval()
    assert model.feature_dim == 64 and model.neck is None
    assert "pooling.p" in model.state_dict()
    with torch.no_grad():
        images = torch.randn(*TINY_IMAGES)
        pooled = model.embedding(model.pooling(model.backbone(images)))
        torch.testing.assert_close(model(images), F.normalize(pooled, dim=1))
    with pytest.raises(ConfigError, match="embedding_dim"):
        ReidModel("resnet18", embedding_dim=-1)
