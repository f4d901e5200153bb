"""udareid export: the file maps [0, 1] RGB images to the same features the toolkit extracts."""

import json
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from tiny_reid_data import write_two_domains

from uda_reid.cli import cli
from uda_reid.config import NORMALIZATIONS, RunConfig, apply_overrides
from uda_reid.data.datasets import load_dataset
from uda_reid.models import ReidModel
from uda_reid.models.checkpoints import save_checkpoint
from uda_reid.models.features import extract_features


#: arch -> its model settings: a ResNet with LUPerson's extra BN, and the LUPerson transformer (its registered
#: code shrunk to 2 blocks of width 64) with its class token and TransReID-SSL's normalisation.
ARCHS = {"resnet18": {"model.extra_bn": True, "data.normalization": "lup"},
         "vit_small_ics": {"model.pooling": "token", "data.normalization": "lup_vit"}}


@pytest.fixture(params=sorted(ARCHS))
def trained_checkpoint(tmp_path, request, monkeypatch):
    """A checkpoint whose every layer matters: its normalisation, the extra BN, non-trivial BN statistics."""
    from uda_reid.models import vit

    monkeypatch.setitem(vit.VIT_SIZES, "vit_small_ics", (64, 2, 2, True))
    arch = request.param
    config = apply_overrides(RunConfig(), {"model.arch": arch, "data.height": 32, "data.width": 16, "data.workers": 0,
                                           "data.eval_batch_size": 4, "device": "cpu", **ARCHS[arch]})
    torch.manual_seed(0)
    model = ReidModel(arch, extra_bn=bool(config.model.extra_bn), pooling=config.model.pooling, image_size=(32, 16))
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, 32, 16) * 2 + 0.5)  # moves the BN running statistics off their defaults
    save_checkpoint(tmp_path / "best.pt", config, 0, model=model.state_dict(), num_classes=0, best_mAP=0.0)
    return tmp_path / "best.pt", model.eval(), config


@torch.no_grad()
def run_exported(fmt: str, path, images: torch.Tensor) -> np.ndarray:
    if fmt == "torchscript":
        return torch.jit.load(str(path))(images).numpy()
    if fmt == "pt2":
        return torch.export.load(str(path)).module()(images).numpy()
    onnxruntime = pytest.importorskip("onnxruntime")
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": images.numpy()})[0]


@pytest.mark.parametrize("fmt", ["torchscript", "pt2", "onnx"])
def test_exported_model_gives_the_toolkits_features_from_images_prepared_as_its_json_says(tmp_path, trained_checkpoint, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    weights, model, config = trained_checkpoint
    out = tmp_path / f"model.{fmt}"
    result = CliRunner().invoke(cli, ["export", "--weights", str(weights), "--format", fmt, "--out", str(out)])
    assert result.exit_code == 0, result.output
    described = json.loads((tmp_path / f"model.{fmt}.json").read_text())
    assert described["input"]["shape"] == ["N", 3, 32, 16] and described["input"]["range"] == [0.0, 1.0]
    assert described["normalization"]["mean"] == list(NORMALIZATIONS[config.data.normalization][0])
    assert described["output"]["shape"] == ["N", model.feature_dim]

    # A deployment: resize as the JSON says, scale to [0, 1], run the file (a batch size it was not traced with).
    samples = load_dataset("dukemtmc", write_two_domains(tmp_path / "data")).query[:5]
    height, width = described["input"]["shape"][2:]
    pixels = [np.asarray(Image.open(s.path).convert("RGB").resize((width, height), Image.Resampling.BICUBIC))
              for s in samples]
    images = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() / 255
    exported = run_exported(fmt, out, images)
    expected = extract_features(model, samples, config.data, device=torch.device("cpu"), progress=False).numpy()
    np.testing.assert_allclose(exported, expected, atol=1e-4)
    assert not np.allclose(expected[0], expected[1], atol=1e-2)  # the comparison can tell images apart


def test_onnx_export_without_its_packages_says_which_extra_to_install(tmp_path, trained_checkpoint, monkeypatch):
    weights, _, _ = trained_checkpoint
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # an import of it now fails
    result = CliRunner().invoke(cli, ["export", "--weights", str(weights), "--format", "onnx", "--out",
                                      str(tmp_path / "m.onnx")])
    assert result.exit_code == 1 and "pip install 'uda_reid[onnx]'" in result.output
    assert not (tmp_path / "m.onnx").exists() and not list(tmp_path.glob(".m.onnx*"))
