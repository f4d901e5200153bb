"""The reduced-precision check: every distinct layer of the backbone at the run's shapes, float32 against
the run's precision, before any work; a chosen precision the CPU gets wrong is refused, ``auto`` falls
back to fp32."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from tiny_reid_data import metrics_rows, tiny_adapt_config, write_two_domains

import uda_reid.precision as precision_module
from uda_reid.cli import cli
from uda_reid.errors import ConfigError
from uda_reid.models import arithmetic_check
from uda_reid.models.arithmetic_check import checked_precision, distinct_layers, reduced_precision_fault
from uda_reid.models.backbones import build_backbone
from uda_reid.precision import Precision

BF16 = Precision("bf16", "cpu")


def wrong_in_reduced_precision(monkeypatch, layer_name: str, part: str) -> None:
    """Make one layer's reduced-precision kernel wrong: its ``output``, or only its ``weight`` gradient."""
    original = arithmetic_check._Layer.function

    def function(self):
        exact = original(self)
        if self.name != layer_name:
            return exact

        def faulty(x, w, b):
            if x.dtype == torch.float32:
                return exact(x, w, b)
            if part == "output":
                return exact(x, w, b) * 2
            return exact(x, 2 * w - w.detach(), b)  # the same values, twice the weight gradient

        return faulty

    monkeypatch.setattr(arithmetic_check._Layer, "function", function)


def test_each_distinct_layer_is_found_once_with_its_input_shape_and_the_backbone_is_untouched():
    backbone = build_backbone("resnet18").train()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    layers = distinct_layers(backbone, 32, 16)
    shapes = {layer.name: layer.input_shape for layer in layers}
    assert shapes["conv1"] == (3, 32, 16)
    assert shapes["layer3.0.conv1"] == (128, 4, 2)
    assert "layer1.1.conv1" not in shapes  # the same as layer1.0.conv1: checked once
    assert len(layers) == len({(layer.describe().split(" ", 1)[1]) for layer in layers})
    assert backbone.training
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())


def test_kernels_that_agree_with_float32_show_no_fault():
    backbone = build_backbone("resnet18")
    assert reduced_precision_fault(backbone, torch.float64, 32, 16, "cpu", batch=4, backward=True) is None
    assert reduced_precision_fault(backbone, None, 32, 16, "cpu", batch=4, backward=True) is None
    assert reduced_precision_fault(backbone, torch.bfloat16, 32, 16, "cuda", batch=4, backward=True) is None


@pytest.mark.parametrize("part, found", [("output", "output off by 1"), ("weight", "weight gradient off by 1")])
def test_a_wrong_kernel_is_named_with_its_layer_and_shape(monkeypatch, part, found):
    wrong_in_reduced_precision(monkeypatch, "layer3.0.conv1", part)
    fault = reduced_precision_fault(build_backbone("resnet18"), torch.float64, 32, 16, "cpu", batch=4, backward=True)
    assert fault.startswith("layer3.0.conv1 (3×3 convolution 128→256, stride 2, on 4×2 maps): " + found), fault
    if part == "weight":  # extraction needs no gradients
        assert reduced_precision_fault(build_backbone("resnet18"), torch.float64, 32, 16, "cpu", batch=4,
                                       backward=False) is None


def test_a_chosen_precision_is_refused_in_one_line_and_auto_falls_back_to_fp32(monkeypatch):
    wrong_in_reduced_precision(monkeypatch, "layer3.0.conv1", "output")
    backbone = build_backbone("resnet18")
    with pytest.raises(ConfigError) as error:
        checked_precision(BF16, "bf16", backbone, 32, 16, batch=4, backward=True)
    message = str(error.value)
    assert "\n" not in message and message.startswith("precision bf16: this CPU computes bf16 at 32×16 images: layer3.0.conv1")
    assert "--precision fp32" in message
    precision, note = checked_precision(BF16, "auto", backbone, 32, 16, batch=4, backward=True)
    assert precision == Precision("fp32", "cpu") and note.startswith("precision auto: fp32, as this CPU computes bf16")
    assert checked_precision(Precision("fp32", "cpu"), "fp32", backbone, 32, 16, batch=4, backward=True) == (
        Precision("fp32", "cpu"), None)


def test_a_run_in_auto_precision_falls_back_to_fp32_before_any_work(monkeypatch, tmp_path):
    from uda_reid.engine.loop import adapt

    monkeypatch.setattr(precision_module, "cpu_has_bf16", lambda: True)  # auto means bf16 on this CPU
    wrong_in_reduced_precision(monkeypatch, "layer3.0.conv1", "output")
    built = []
    from uda_reid.methods.base import Method

    build_model = Method.build_model

    def recording(self, model_config, num_classes, compute_dtype):
        built.append(compute_dtype)
        return build_model(self, model_config, num_classes, compute_dtype)

    monkeypatch.setattr(Method, "build_model", recording)
    data_root = write_two_domains(tmp_path / "data")
    config = tiny_adapt_config(target="dukemtmc", **{"precision": "auto", "adapt.epochs": 1})
    adapt(config, tmp_path / "run", data_root=data_root, progress=False)
    # the memory check's measuring copy, then auto's bf16, the check found the fault, the run is fp32
    assert built == [torch.bfloat16, torch.bfloat16, None]
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "note: precision auto: fp32, as this CPU computes bf16 at 32×16 images: layer3.0.conv1" in log
    assert "backbone in" not in log
    assert [r["epoch"] for r in metrics_rows(tmp_path / "run")] == [0, 1]


def test_a_bf16_run_on_this_machine_either_trains_on_finite_numbers_or_is_refused_before_training(tmp_path):
    """Whatever this CPU's kernels: at 32×16 (the shapes some get wrong) no bf16 run ends in NaN."""
    data_root = write_two_domains(tmp_path / "data")
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, [
        "usl", "--dataset", "duke", "--precision", "bf16", "--data-root", str(data_root), "--out", str(out),
        "--epochs", "1", "--quiet", "--device", "cpu", "--set", "data.height=32", "--set", "data.width=16",
        "--set", "model.arch=resnet18", "--set", "data.batch_size=16", "--set", "data.workers=0",
        "--set", "adapt.iters_per_epoch=2", "--set", "clustering.k1=6", "--set", "clustering.k2=2",
        "--set", "clustering.min_samples=2"])
    if result.exit_code == 0:
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert all(v == v for row in rows for v in row.values() if isinstance(v, float)), rows
    else:
        last = result.output.strip().splitlines()[-1]
        assert last.startswith("Error: precision bf16: this CPU computes bf16 at 32×16 images: "), result.output
        assert not (out / "last.pt").exists()
