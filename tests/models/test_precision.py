"""Mixed precision: the backbone computes in the chosen dtype, everything the model returns is float32,
the weights stay float32, and what a device cannot do is refused by name."""

import pytest
import torch
from tiny_reid_data import metrics_rows, tiny_adapt_config, write_two_domains

import uda_reid.precision as precision_module
from uda_reid.errors import ConfigError
from uda_reid.models.reid_model import ReidModel
from uda_reid.precision import Precision, resolve_precision

CPU = torch.device("cpu")


def test_auto_is_bf16_on_a_cpu_with_bf16_arithmetic_and_fp32_otherwise(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_has_bf16", lambda: True)
    assert resolve_precision("auto", CPU) == Precision("bf16", "cpu")
    monkeypatch.setattr(precision_module, "cpu_has_bf16", lambda: False)
    assert resolve_precision("auto", CPU).dtype is None


def test_fp16_on_a_cpu_is_refused_with_the_alternatives():
    with pytest.raises(ConfigError, match="precision fp16 needs a GPU.*use bf16"):
        resolve_precision("fp16", CPU)


def test_an_unknown_precision_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match="precision must be one of fp32, bf16, fp16, auto, got 'half'"):
        resolve_precision("half", CPU)


def test_only_fp16_scales_gradients():
    assert Precision("fp16", "cuda").scales_gradients
    assert not Precision("bf16", "cpu").grad_scaler().is_enabled()


def test_the_backbone_runs_in_bf16_and_the_outputs_and_weights_stay_float32():
    torch.manual_seed(0)
    exact_model = ReidModel("resnet18", num_classes=5).train()
    model = ReidModel("resnet18", num_classes=5, compute_dtype=torch.bfloat16).train()  # the precision, given once
    model.load_state_dict(exact_model.state_dict())
    images = torch.randn(4, 3, 64, 32)  # tiny_reid_data.BF16_SIZE
    seen = []
    model.backbone.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    mixed = model(images)
    assert seen == [torch.bfloat16]
    assert all(t.dtype == torch.float32 for t in mixed)  # pooled, features, logits
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert set(model.state_dict()) == set(ReidModel("resnet18", num_classes=5).state_dict())
    exact_model.load_state_dict(model.state_dict())  # the same BN statistics after the training step
    retrieval = model.eval()(images)
    exact = exact_model.eval()(images)
    assert retrieval.dtype == torch.float32
    assert torch.allclose(retrieval.norm(dim=1), torch.ones(4), atol=1e-5)
    # bf16 keeps 8 significant bits: the retrieval features differ, but point the same way
    cosine = (retrieval * exact).sum(dim=1)
    assert not torch.equal(retrieval, exact) and bool((cosine > 0.999).all()), cosine


def test_an_fp16_run_scales_its_loss_and_resumes_with_the_scaler_state(tmp_path, monkeypatch):
    """The GPU fp16 path (gradient scaler) driven on the CPU, where autocast also knows float16."""
    from uda_reid.engine import loop
    from uda_reid.models.checkpoints import load_checkpoint

    monkeypatch.setattr(loop, "resolve_precision", lambda name, device: Precision("fp16", "cpu"))
    data_root = write_two_domains(tmp_path / "data")
    config = tiny_adapt_config(target="dukemtmc", **{"adapt.method": "spcl", "adapt.epochs": 1})
    loop.adapt(config, tmp_path / "run", data_root=data_root, progress=False)
    rows = [r for r in metrics_rows(tmp_path / "run") if r["epoch"] == 1]
    assert rows and all(torch.isfinite(torch.tensor(v)) for k, v in rows[0].items() if k.startswith("loss"))
    scaler = load_checkpoint(tmp_path / "run" / "last.pt")["train_state"]["grad_scaler"]
    assert scaler["scale"] > 0 and "_growth_tracker" in scaler  # a live scaler's state, saved for --resume
