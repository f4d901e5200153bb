"""Grouped BatchNorm statistics (bn_groups) and domain-specific BatchNorm (DSBN) against plain BatchNorm."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from uda_reid.errors import ConfigError
from uda_reid.models import BNNeck, ReidModel
from uda_reid.models.batchnorm import (
    DomainSpecificBatchNorm,
    GroupedBatchNorm2d,
    bn_domain,
    convert_to_domain_specific_bn,
    convert_to_grouped_bn,
    domain_specific_to_plain,
    set_bn_domain,
)

TINY_IMAGES = (4, 3, 32, 16)


def random_batchnorm2d(channels: int = 3) -> nn.BatchNorm2d:
    layer = nn.BatchNorm2d(channels)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-0.5, 0.5)
        layer.running_mean.uniform_(-1, 1)
        layer.running_var.uniform_(0.5, 2)
    return layer


# --- grouped statistics ---------------------------------------------------------------------------


def test_grouped_bn_normalises_each_chunk_and_keeps_chunk_0_running_stats() -> None:
    torch.manual_seed(0)
    plain = random_batchnorm2d()
    grouped = convert_to_grouped_bn(plain, 4).train()
    inputs = torch.randn(8, 3, 4, 4) * 3 + torch.arange(8.0).view(8, 1, 1, 1)  # chunks differ in mean
    output = grouped(inputs)

    weight = plain.weight.detach().clone().requires_grad_(True)
    chunks = inputs.chunk(4)
    expected = torch.cat(
        [F.batch_norm(c, None, None, weight, plain.bias, training=True, eps=plain.eps) for c in chunks]
    )
    torch.testing.assert_close(output, expected)
    assert not torch.allclose(output, F.batch_norm(inputs, None, None, plain.weight, plain.bias, training=True))

    # running statistics: replica 0 only, i.e. one momentum-0.1 step with chunk 0's mean and unbiased variance
    torch.testing.assert_close(grouped.running_mean, 0.9 * plain.running_mean + 0.1 * chunks[0].mean(dim=(0, 2, 3)))
    torch.testing.assert_close(grouped.running_var, 0.9 * plain.running_var + 0.1 * chunks[0].var(dim=(0, 2, 3)))
    assert grouped.num_batches_tracked.item() == 1

    # gradients go through every chunk's normalisation
    output.pow(2).mul(torch.linspace(0, 1, output.numel()).view_as(output)).sum().backward()
    expected.pow(2).mul(torch.linspace(0, 1, output.numel()).view_as(output)).sum().backward()
    torch.testing.assert_close(grouped.weight.grad, weight.grad)


def test_one_group_is_plain_batchnorm_exactly_and_eval_uses_running_stats() -> None:
    torch.manual_seed(1)
    plain = random_batchnorm2d()
    grouped = convert_to_grouped_bn(plain, 1)
    inputs = torch.randn(6, 3, 2, 2)
    assert torch.equal(grouped.train()(inputs), plain.train()(inputs))
    assert torch.equal(grouped.running_mean, plain.running_mean)
    assert torch.equal(grouped.running_var, plain.running_var)

    four = convert_to_grouped_bn(plain, 3).eval()
    assert torch.equal(four(inputs), plain.eval()(inputs))
    assert torch.equal(four.running_mean, plain.running_mean)  # eval does not touch the buffers


def test_conversion_keeps_state_dict_keys_and_leaves_the_input_alone() -> None:
    model = ReidModel("resnet18")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grouped = convert_to_grouped_bn(model, 2)
    assert all(
        type(m) in (nn.BatchNorm2d, BNNeck) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    )
    assert isinstance(grouped.backbone.bn1, GroupedBatchNorm2d)
    assert isinstance(grouped.neck, BNNeck) and not grouped.neck.bias.requires_grad
    assert list(grouped.state_dict()) == list(before)
    grouped.load_state_dict(before)  # a plain checkpoint loads as is
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_batch_not_divisible_by_groups_is_a_config_error() -> None:
    layer = convert_to_grouped_bn(nn.BatchNorm1d(5), 4).train()
    with pytest.raises(ConfigError, match=r"bn_groups=4 must divide the batch size, but a batch of 10 samples"):
        layer(torch.randn(10, 5))
    layer.eval()(torch.randn(10, 5))  # eval mode has no groups
    with pytest.raises(ConfigError, match="bn_groups must be a positive integer"):
        convert_to_grouped_bn(nn.BatchNorm1d(5), 0)


# --- domain-specific BN -----------------------------------------------------------------------------


def bn_states(model: nn.Module, domain: str) -> dict[str, torch.Tensor]:
    marker = f".{domain}."
    return {k.replace(marker, "."): v.clone() for k, v in model.state_dict().items() if marker in k}


def test_dsbn_copies_start_equal_and_source_training_changes_only_source_statistics() -> None:
    torch.manual_seed(2)
    plain = ReidModel("resnet18").eval()
    model = convert_to_domain_specific_bn(plain)
    assert (
        "neck.source.weight" in model.state_dict() and "backbone.layer1.0.bn1.target.running_var" in model.state_dict()
    )
    assert not any(isinstance(m, DomainSpecificBatchNorm) for m in plain.modules())  # input not converted
    source_before, target_before = bn_states(model, "source"), bn_states(model, "target")
    assert source_before.keys() == target_before.keys() and len(source_before) > 0
    assert all(torch.equal(source_before[k], target_before[k]) for k in source_before)

    images = torch.randn(*TINY_IMAGES)
    model.train()
    with bn_domain(model, "source"), torch.no_grad():
        model(images)
    source_after, target_after = bn_states(model, "source"), bn_states(model, "target")
    assert all(torch.equal(target_before[k], target_after[k]) for k in target_before)
    assert not torch.equal(source_before["neck.running_mean"], source_after["neck.running_mean"])
    assert all(m.domain == "target" for m in model.modules() if isinstance(m, DomainSpecificBatchNorm))

    # evaluation runs on the target copy: identical to the unconverted model
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(images), plain(images))
        with bn_domain(model, "source"):
            assert not torch.allclose(model(images), plain(images))


def test_bnneck_bias_stays_zero_and_frozen_in_both_copies_after_an_optimizer_step() -> None:
    torch.manual_seed(3)
    model = convert_to_domain_specific_bn(ReidModel("resnet18")).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1, weight_decay=5e-4)
    weight_before = model.neck.target.weight.detach().clone()
    for domain in ("source", "target"):
        assert set_bn_domain(model, domain) > 0
        output = model(torch.randn(*TINY_IMAGES))
        (output.features * torch.randn_like(output.features)).sum().backward()
    optimizer.step()
    for copy_ in (model.neck.source, model.neck.target):
        assert torch.equal(copy_.bias, torch.zeros_like(copy_.bias)) and not copy_.bias.requires_grad
    assert not torch.equal(model.neck.target.weight, weight_before)


def test_domain_specific_to_plain_loads_into_a_plain_model_with_identical_outputs() -> None:
    torch.manual_seed(4)
    model = convert_to_domain_specific_bn(ReidModel("resnet18")).train()
    with torch.no_grad():
        for domain in ("source", "target"):  # make the copies differ
            with bn_domain(model, domain):
                model(torch.randn(*TINY_IMAGES) + (1.0 if domain == "source" else -1.0))
    state = model.state_dict()
    keys_before = list(state)
    images = torch.randn(*TINY_IMAGES)
    model.eval()
    for domain in ("target", "source"):
        plain = ReidModel("resnet18").eval()
        plain.load_state_dict(domain_specific_to_plain(state, domain))  # strict: every key maps
        with torch.no_grad(), bn_domain(model, domain):
            torch.testing.assert_close(plain(images), model(images), rtol=0, atol=0)
    assert list(state) == keys_before
    with pytest.raises(ValueError, match="source, target"):
        domain_specific_to_plain(state, "both")


def test_a_layer_named_target_without_a_source_twin_is_not_renamed() -> None:
    plain_state = {"head.target.weight": torch.ones(2), "conv.weight": torch.zeros(1)}
    assert list(domain_specific_to_plain(plain_state)) == ["head.target.weight", "conv.weight"]


@pytest.mark.parametrize("dsbn_first", [True, False])
def test_dsbn_composes_with_grouped_statistics(dsbn_first: bool) -> None:
    torch.manual_seed(5)
    layer = random_batchnorm2d()
    if dsbn_first:
        model = convert_to_grouped_bn(convert_to_domain_specific_bn(nn.Sequential(layer)), 2)
    else:
        model = convert_to_domain_specific_bn(convert_to_grouped_bn(nn.Sequential(layer), 2))
    model.train()
    inputs = torch.randn(6, 3, 2, 2)
    with bn_domain(model, "source"):
        output = model(inputs)
    chunks = inputs.chunk(2)
    expected = torch.cat([F.batch_norm(c, None, None, layer.weight, layer.bias, training=True) for c in chunks])
    torch.testing.assert_close(output, expected)
    dsbn = model[0]
    torch.testing.assert_close(dsbn.source.running_mean, 0.9 * layer.running_mean + 0.1 * chunks[0].mean(dim=(0, 2, 3)))
    assert torch.equal(dsbn.target.running_mean, layer.running_mean)
    with pytest.raises(ConfigError, match="bn_groups=2"):
        model(torch.randn(5, 3, 2, 2))  # target copy is grouped too
