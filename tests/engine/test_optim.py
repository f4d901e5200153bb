import pytest
import torch

from uda_reid.config import OptimConfig
from uda_reid.engine.optim import build_optimizer, build_scheduler, lr_factor
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
