"""The ``speed`` settings change how the network runs, not what it computes: channels-last, the fused
optimiser step and torch.compile give the same numbers within float rounding (here on the CPU)."""

import copy

import pytest
import torch

from uda_reid.config import ModelConfig, OptimConfig, SpeedConfig
from uda_reid.engine.device_speed import apply_speed, wanted
from uda_reid.engine.optim import build_optimizer
from uda_reid.models.factory import build_model

CPU = torch.device("cpu")


def small_resnet(seed: int = 0):
    torch.manual_seed(seed)
    model, _ = build_model(ModelConfig(arch="resnet18", init=None), num_classes=5, image_size=(64, 32))
    return model.train()


def batch(seed: int = 0):
    """The same images and labels whatever ran before (the global random state varies with test order)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(8, 3, 64, 32, generator=generator), torch.randint(0, 5, (8,), generator=generator)


def one_step(model, optimizer, images, labels):
    output = model(images)
    loss = torch.nn.functional.cross_entropy(output.logits, labels) + output.features.pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach()


@pytest.mark.parametrize(("setting", "device", "expected"), [
    ("auto", "cpu", False), ("auto", "cuda", True), ("on", "cpu", True), ("off", "cuda", False)])
def test_auto_means_on_a_gpu_only(setting, device, expected):
    assert wanted(setting, torch.device(device)) is expected


def test_channels_last_gives_the_same_losses_and_gradients_within_float_rounding():
    images, labels = batch()
    plain = small_resnet()
    fast = copy.deepcopy(plain)
    assert apply_speed(fast, SpeedConfig(channels_last="on"), CPU) == ["channels-last"]
    conv = fast.backbone.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    losses = []
    for model in (plain, fast):
        output = model(images)
        loss = torch.nn.functional.cross_entropy(output.logits, labels) + output.features.pow(2).mean()
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(plain.named_parameters(), fast.parameters()):
        if a.grad is None:  # a parameter this loss does not reach
            assert b.grad is None
            continue
        # 2e-5 on this batch; on some batches of 8 the training-mode neck magnifies the rounding to
        # ~0.5 % in every layer alike, while a wrong layout would be off by far more
        assert (b.grad - a.grad).norm() <= 1e-3 * a.grad.norm() + 1e-7, name


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_the_fused_optimiser_step_gives_the_same_weights_within_float_rounding(optimizer):
    images, labels = batch()
    plain = small_resnet()
    fused = copy.deepcopy(plain)
    config = OptimConfig(optimizer=optimizer, lr=1e-3)
    plain_opt, fused_opt = build_optimizer(plain, config), build_optimizer(fused, config, fused=True)
    assert fused_opt.defaults["fused"] and not plain_opt.defaults.get("fused")
    before = copy.deepcopy(plain.state_dict())
    # one step: the same gradients, only the update's arithmetic differs (later steps would start from
    # weights a rounding apart, and Adam's normalisation magnifies that in near-zero gradients)
    torch.testing.assert_close(one_step(fused, fused_opt, images, labels), one_step(plain, plain_opt, images, labels))
    for (name, a), b, start in zip(plain.state_dict().items(), fused.state_dict().values(), before.values()):
        if a.dtype.is_floating_point:
            assert (b - a).norm() <= 1e-4 * (a - start).norm() + 1e-7, name


def test_a_network_without_convolutions_keeps_its_layout():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    assert apply_speed(model, SpeedConfig(channels_last="on"), CPU) == []


@pytest.mark.slow
def test_compile_in_place_keeps_the_checkpoint_keys_and_the_outputs():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    images = torch.randn(2, 3, 8, 8)
    expected = model(images)
    keys = list(model.state_dict())
    assert apply_speed(model, SpeedConfig(compile=True), CPU) == ["torch.compile"]
    assert list(model.state_dict()) == keys  # a checkpoint of a compiled run loads into a plain model
    torch.testing.assert_close(model(images), expected, rtol=1e-5, atol=1e-6)
