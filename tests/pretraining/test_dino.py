"""DINO: the loss, the teacher's schedule, the head, the crops, and `udareid pretrain --method dino` on the
LUPerson transformer giving a backbone that starts a USL run."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image
from tiny_reid_data import metrics_rows, tiny_pretrain_config, write_two_domains

from uda_reid.cli import cli
from uda_reid.config import save_config
from uda_reid.data.transforms import MultiCropViews
from uda_reid.models.checkpoint_import import load_init
from uda_reid.models.reid_model import ReidModel
from uda_reid.pretraining.dino import DinoHead, dino_loss

SMALL_VIT = (64, 2, 2, True)
SIZE = {"data.height": 64, "data.width": 32}  # the small crops (32x16) in whole 16-pixel patches


@pytest.fixture
def small_vit(monkeypatch):
    from uda_reid.models import vit

    monkeypatch.setitem(vit.VIT_SIZES, "vit_small_ics", SMALL_VIT)


def test_the_loss_pairs_every_student_crop_with_every_other_global_teacher_crop():
    torch.manual_seed(0)
    student = [torch.randn(3, 5) for _ in range(3)]  # two global crops, one local
    teacher = [torch.randn(3, 5) for _ in range(2)]
    center = torch.randn(1, 5)
    expected = []
    for i, t in enumerate(teacher):
        target = F.softmax((t - center) / 0.04, dim=1)
        for v, s in enumerate(student):
            if v != i:
                expected.append(-(target * F.log_softmax(s / 0.1, dim=1)).sum(dim=1).mean())
    assert len(expected) == 4
    assert dino_loss(student, teacher, center, 0.1, 0.04) == pytest.approx(float(sum(expected) / 4), rel=1e-6)


def test_the_heads_last_layer_keeps_unit_norm_rows_and_trains_only_their_direction():
    head = DinoHead(8, 16, hidden=12, bottleneck=4)
    weight = head.last_layer.weight
    assert torch.allclose(weight.norm(dim=1), torch.ones(16))
    assert not head.last_layer.parametrizations.weight.original0.requires_grad
    assert head(torch.randn(3, 8)).shape == (3, 16)


def test_multi_crop_views_give_two_global_crops_and_the_small_ones_at_half_size():
    config = tiny_pretrain_config(**{"pretrain.method": "dino", "pretrain.local_crops": 3, "data.normalization": "imagenet"})
    views = MultiCropViews(config.data, config.pretrain)(Image.new("RGB", (20, 50), (120, 30, 200)))
    assert views["global_0"].shape == views["global_1"].shape == (3, 32, 16)
    assert views["local"].shape == (3, 3, 16, 8)


def test_the_teacher_momentum_rises_from_key_momentum_to_one_on_a_cosine():
    from uda_reid.pretraining.dino import Dino

    method = Dino(tiny_pretrain_config(**{"pretrain.method": "dino", "pretrain.key_momentum": 0.996}))
    method.total_steps = 100
    method.teacher = type("T", (), {"steps": torch.tensor(0)})()
    values = []
    for step in (0, 50, 100):
        method.teacher.steps = torch.tensor(step)
        values.append(method.teacher_momentum())
    assert values[0] == pytest.approx(0.996) and values[1] == pytest.approx(0.998) and values[2] == pytest.approx(1.0)


def test_pretrain_dino_on_the_lup_transformer_gives_a_backbone_that_starts_a_usl_run(tmp_path, small_vit):
    data_root = write_two_domains(tmp_path / "data")
    recipe = tmp_path / "tiny_dino.yaml"
    save_config(tiny_pretrain_config(**{"pretrain.method": "dino", "model.arch": "vit_small_ics",
                                        "model.pooling": "token", "pretrain.local_crops": 2,
                                        "pretrain.freeze_last_layer": 1, "pretrain.bn_groups": 1,
                                        "optim.optimizer": "adamw", "optim.lr": 1e-3, **SIZE}), recipe)
    out = tmp_path / "dino"
    result = CliRunner().invoke(cli, ["pretrain", "--method", "dino", "--arch", "vit_small_ics", "--recipe", str(recipe),
                                      "--dataset", "market", "--dataset", "duke", "--eval-on", "duke",
                                      "--data-root", str(data_root), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    rows = metrics_rows(out)
    assert [r["epoch"] for r in rows] == [1, 2] and all(math.isfinite(r["loss_dino"]) for r in rows)
    # backbone.pth is the teacher's backbone in TransReID-SSL's key names: lup: and moco: read all of it
    model = ReidModel("vit_small_ics", pooling="token", image_size=(64, 32))
    assert load_init(model, f"lup:{out / 'backbone.pth'}").matched_fraction == 1.0
    usl = CliRunner().invoke(cli, [
        "usl", "--dataset", "duke", "--method", "cluster_contrast", "--init", f"moco:{out / 'backbone.pth'}",
        "--data-root", str(data_root), "--out", str(tmp_path / "usl"), "--epochs", "1", "--quiet",
        "--set", "device=cpu", "--set", "model.arch=vit_small_ics", "--set", "model.pooling=token",
        *[arg for key, value in {**SIZE, "data.workers": 0}.items() for arg in ("--set", f"{key}={value}")],
        "--set", "data.batch_size=16", "--set", "data.num_instances=4", "--set", "adapt.iters_per_epoch=2",
        "--set", "clustering.k1=6", "--set", "clustering.k2=2", "--set", "clustering.min_samples=2"])
    assert usl.exit_code == 0, usl.output
    log = (tmp_path / "usl" / "log.txt").read_text()
    assert "data.normalization auto: imagenet (the normalisation of the pre-training run" in log
    assert "loaded 47/47" in log or "(100.0%)" in log


def test_small_crops_that_do_not_split_into_patches_are_refused_before_any_work():
    from uda_reid.errors import ConfigError
    from uda_reid.pretraining.dino import Dino

    with pytest.raises(ConfigError, match=r"pretrain.local_crops: the small crops \(16x8, half of data.height x data.width\)"):
        Dino(tiny_pretrain_config(**{"pretrain.method": "dino", "model.arch": "vit_small_ics", "model.pooling": "token"}))
