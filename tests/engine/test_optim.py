import math

import pytest
import torch

from uda_reid.config import OptimConfig
from uda_reid.engine.optim import build_optimizer, build_scheduler, clip_gradients, lr_factor, set_weight_decay
from uda_reid.errors import ConfigError


def test_warmup_then_steps():
    config = OptimConfig(lr=1.0, warmup_epochs=10, warmup_factor=0.01, milestones=[40, 70], gamma=0.1)
    assert lr_factor(0, config) == pytest.approx(0.01)
    assert lr_factor(5, config) == pytest.approx(0.01 * 0.5 + 0.5)
    assert lr_factor(10, config) == pytest.approx(1.0)
    assert lr_factor(39, config) == pytest.approx(1.0)
    assert lr_factor(40, config) == pytest.approx(0.1)
    assert lr_factor(70, config) == pytest.approx(0.01)


def test_scheduler_applies_the_factor_per_epoch():
    model = torch.nn.Linear(2, 2)
    config = OptimConfig(lr=0.5, warmup_epochs=2, warmup_factor=0.1, milestones=[3], gamma=0.5)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)
    seen = []
    for _ in range(5):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.05, 0.275, 0.5, 0.25, 0.25])


def test_unknown_optimizer_is_named():
    with pytest.raises(ConfigError, match="optim.optimizer: unknown optimizer 'rmsprop'"):
        build_optimizer(torch.nn.Linear(1, 1), OptimConfig(optimizer="rmsprop"))


def test_cosine_warm_up_replaces_the_cosine_and_ends_on_the_floor_as_timms_scheduler():
    """TransReID's CosineLRScheduler (warmup_t 20, lr_min 0.002 × base, warmup_prefix off, 120 epochs):
    lr(t) = warmup_init + t·(base − warmup_init)/20 while t < 20, then lr_min + ½(base − lr_min)(1 + cos(π t/120))."""
    config = OptimConfig(schedule="cosine", warmup_epochs=20, warmup_factor=0.01, min_lr_factor=0.002)
    for epoch in (0, 7, 19):
        assert lr_factor(epoch, config, 120) == pytest.approx(0.01 + epoch * (1 - 0.01) / 20)
    for epoch in (20, 60, 119):
        assert lr_factor(epoch, config, 120) == pytest.approx(0.002 + 0.5 * (1 - 0.002) * (1 + math.cos(math.pi * epoch / 120)))
    assert lr_factor(0, OptimConfig(schedule="cosine", warmup_epochs=0), 10) == 1.0


def test_biases_train_faster_and_biases_and_norms_can_skip_weight_decay():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2, bias=False))
    optimizer = build_optimizer(model, OptimConfig(optimizer="sgd", lr=0.1, weight_decay=1e-4, bias_lr_factor=2.0))
    by_tensor = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    assert by_tensor[id(model[0].bias)]["lr"] == pytest.approx(0.2) and by_tensor[id(model[0].weight)]["lr"] == 0.1
    assert by_tensor[id(model[1].bias)]["lr"] == pytest.approx(0.2)
    optimizer = build_optimizer(model, OptimConfig(optimizer="adamw", lr=0.1, weight_decay=0.04, decay_bias_and_norm=False))
    assert isinstance(optimizer, torch.optim.AdamW)
    by_tensor = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    assert [by_tensor[id(p)]["weight_decay"] for p in model.parameters()] == [0.04, 0.0, 0.0, 0.0, 0.04]


def test_weight_decay_follows_half_a_cosine_to_its_final_value():
    model = torch.nn.Linear(3, 4)
    config = OptimConfig(optimizer="adamw", weight_decay=0.04, final_weight_decay=0.4, decay_bias_and_norm=False)
    optimizer = build_optimizer(model, config)
    decays = []
    for epoch in (0, 50, 100):
        set_weight_decay(optimizer, config, epoch, 100)
        decays.append({g["weight_decay"] for g in optimizer.param_groups})
    assert sorted(decays[0]) == pytest.approx([0.0, 0.04]) and sorted(decays[2]) == pytest.approx([0.0, 0.4])
    assert max(decays[1]) == pytest.approx(0.22)


def test_each_parameters_gradient_is_clipped_on_its_own():
    small, large = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    small.grad, large.grad = torch.tensor([0.3, 0.4]), torch.tensor([30.0, 40.0])
    clip_gradients([small, large], 3.0)
    assert torch.allclose(small.grad, torch.tensor([0.3, 0.4])) and large.grad.norm() == pytest.approx(3.0, rel=1e-5)
