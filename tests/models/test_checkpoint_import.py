"""Checkpoint import: every real key format lands its weights; bad files are refused with useful messages.

Checkpoints are written here in each format from a randomly initialised torchvision ResNet whose every
floating tensor (BN statistics included) is re-drawn, so equality proves the tensor was loaded.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file

from uda_reid.errors import CheckpointError, ConfigError
from uda_reid.models import (
    ImportReport,
    ReidModel,
    load_init,
    load_state_dict_file,
    lup_uses_extra_bn,
    parse_init_spec,
)


# --- writers for the key formats users bring ------------------------------------------------------


def randomised(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Same names and shapes, fresh positive values (valid as BN variances too)."""
    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.rand(tensor.shape, generator=generator) + 0.5 if tensor.is_floating_point() else tensor.clone()
        for name, tensor in state.items()
    }


def resnet_weights(arch: str = "resnet18", *, seed: int = 1, with_fc: bool = False) -> dict[str, torch.Tensor]:
    """A torchvision ResNet state dict (ImageNet layout when ``with_fc``, LUPerson release layout otherwise)."""
    state = randomised(getattr(torchvision.models, arch)(weights=None).state_dict(), seed)
    return state if with_fc else {name: tensor for name, tensor in state.items() if not name.startswith("fc.")}


def moco_checkpoint(arch: str = "resnet18") -> tuple[dict, dict[str, torch.Tensor]]:
    """A raw MoCo v2 training checkpoint (LUPerson pre-training) and its query-encoder backbone weights."""
    query = resnet_weights(arch, seed=1)
    key = resnet_weights(arch, seed=2)
    channels = query["layer4.0.bn1.weight"].shape[0] * (4 if arch in ("resnet50", "resnet101") else 1)
    state: dict[str, torch.Tensor] = {}
    for prefix, encoder in (("module.encoder_q.", query), ("module.encoder_k.", key)):
        state.update({prefix + name: tensor for name, tensor in encoder.items()})
        state[prefix + "fc.0.weight"] = torch.rand(channels, channels)
        state[prefix + "fc.0.bias"] = torch.rand(channels)
        state[prefix + "fc.2.weight"] = torch.rand(128, channels)
        state[prefix + "fc.2.bias"] = torch.rand(128)
    state["module.queue"] = torch.rand(128, 16)
    state["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    optimizer = {"state": {}, "param_groups": [{"lr": 0.3, "momentum": 0.9, "weight_decay": 1e-4, "params": [0]}]}
    return {"epoch": 200, "arch": arch, "state_dict": state, "optimizer": optimizer}, query


def save(tmp_path: Path, name: str, content: object) -> Path:
    path = tmp_path / name
    torch.save(content, path)
    return path


def assert_backbone_holds(model: ReidModel, expected: dict[str, torch.Tensor]) -> None:
    backbone_state = model.backbone.state_dict()
    names = [name for name in backbone_state if not name.endswith("num_batches_tracked")]
    assert names and all(torch.equal(backbone_state[name], expected[name]) for name in names)


# --- every format lands its weights ----------------------------------------------------------------


def test_torchvision_imagenet_file_loads_the_backbone_and_drops_fc(tmp_path: Path) -> None:
    weights = resnet_weights(with_fc=True)
    path = save(tmp_path, "resnet18-imagenet.pth", weights)
    model = ReidModel("resnet18", num_classes=4)
    classifier_before = model.classifier.weight.clone()

    report = load_init(model, f"imagenet:{path}")

    assert_backbone_holds(model, weights)
    assert torch.equal(model.classifier.weight, classifier_before)
    assert report.format == "torchvision ImageNet"
    assert report.dropped_heads == ["fc.weight", "fc.bias"]
    assert report.matched_fraction == 1.0 and report.missing == [] and report.unexpected == []
    assert "torchvision ImageNet" in str(report) and "100.0%" in str(report)


def test_lup_plain_resnet50_release_without_batch_counters(tmp_path: Path) -> None:
    weights = {n: t for n, t in resnet_weights("resnet50").items() if not n.endswith("num_batches_tracked")}
    path = save(tmp_path, "lup_moco_r50.pth", weights)
    model = ReidModel("resnet50", extra_bn=True)

    report = load_init(model, f"lup:{path}")

    assert_backbone_holds(model, weights)
    assert report.format == "LUPerson (plain)"
    assert report.missing == [] and report.matched_fraction == 1.0  # num_batches_tracked is not required


def test_raw_lup_moco_checkpoint_loads_the_query_encoder_only(tmp_path: Path) -> None:
    checkpoint, query = moco_checkpoint()
    path = save(tmp_path, "checkpoint_0199.pth.tar", checkpoint)
    model = ReidModel("resnet18")

    report = load_init(model, f"lup:{path}")

    assert_backbone_holds(model, query)  # not the key encoder, whose values differ
    assert report.format == "LUPerson MoCo (raw)"
    assert report.stripped_prefixes == ["module.", "encoder_q."]
    moco_head = [f"module.encoder_q.fc.{layer}.{part}" for layer in (0, 2) for part in ("weight", "bias")]
    assert sorted(report.dropped_heads) == sorted(moco_head)
    assert {"module.queue", "module.queue_ptr", "module.encoder_k.conv1.weight"} <= set(report.skipped)
    assert report.unexpected == [] and report.missing == []


def test_upreid_like_file_with_base_encoder_backbone_prefixes_and_heads(tmp_path: Path) -> None:
    weights = resnet_weights()
    state = {f"module.base_encoder.backbone.{name}": tensor for name, tensor in weights.items()}
    state["module.base_encoder.projector.0.weight"] = torch.rand(256, 512)
    state["module.base_encoder.projector.1.running_mean"] = torch.rand(256)
    state["module.predictor.0.weight"] = torch.rand(128, 256)
    path = save(tmp_path, "upreid_r18.pth", {"model": state, "epoch": 10})
    model = ReidModel("resnet18")

    report = load_init(model, f"upreid:{path}")

    assert_backbone_holds(model, weights)
    assert report.format == "UP-ReID generic"
    assert len(report.dropped_heads) == 3 and report.unexpected == []
    assert report.stripped_prefixes == ["module.", "base_encoder.", "backbone."]


def test_dataparallel_prefixed_state_dict_from_a_bare_path(tmp_path: Path) -> None:
    weights = resnet_weights(with_fc=True)
    path = save(tmp_path, "dp.pth", {"state_dict": {f"module.{n}": t for n, t in weights.items()}})
    model = ReidModel("resnet18")

    report = load_init(model, str(path))

    assert_backbone_holds(model, weights)
    assert report.format == "generic" and report.stripped_prefixes == ["module."]
    assert report.dropped_heads == ["module.fc.weight", "module.fc.bias"]


def test_safetensors_file(tmp_path: Path) -> None:
    weights = resnet_weights()
    path = tmp_path / "resnet18.safetensors"
    save_file(weights, str(path))
    model = ReidModel("resnet18")

    report = load_init(model, f"imagenet:{path}")

    assert_backbone_holds(model, weights)
    assert report.matched_fraction == 1.0


def _run_checkpoint(num_classes: int, *, version: int = 1) -> dict:
    trained = ReidModel("resnet18", num_classes=num_classes, extra_bn=True)
    state = randomised(trained.state_dict(), seed=3)
    state["neck.bias"].zero_()
    config = {"model": {"arch": "resnet18", "extra_bn": True}, "method": "spcl"}
    return {"format": "uda_reid", "version": version, "model": state, "config": config, "epoch": 3}


def test_own_run_checkpoint_loads_everything_but_the_classifier(tmp_path: Path) -> None:
    checkpoint = _run_checkpoint(num_classes=6)
    path = save(tmp_path, "epoch_3.pth", checkpoint)
    model = ReidModel("resnet18", num_classes=6, extra_bn=True)
    classifier_before = model.classifier.weight.clone()

    report = load_init(model, str(path))

    state = model.state_dict()
    for name, tensor in checkpoint["model"].items():
        if not name.startswith("classifier.") and not name.endswith("num_batches_tracked"):
            assert torch.equal(state[name], tensor), name
    assert torch.equal(model.classifier.weight, classifier_before)  # same class count, still not loaded
    assert report.format == "uda_reid run checkpoint"
    assert report.dropped_heads == ["classifier.weight"]
    assert report.matched_fraction == 1.0 and {"neck.weight", "extra_bn.running_var"} <= set(report.loaded)


def test_bare_reid_model_state_dict_also_loads_the_neck(tmp_path: Path) -> None:
    state = _run_checkpoint(num_classes=3)["model"]
    path = save(tmp_path, "model_state.pth", state)
    model = ReidModel("resnet18", num_classes=5, extra_bn=True)

    report = load_init(model, str(path))

    assert report.format == "uda_reid model state dict"
    assert torch.equal(model.neck.weight, state["neck.weight"])
    assert torch.equal(model.extra_bn.running_mean, state["extra_bn.running_mean"])
    assert model.classifier.weight.shape == (5, 512)  # the file's 3-class classifier is dropped


def test_own_run_checkpoint_of_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = save(tmp_path, "future.pth", _run_checkpoint(num_classes=2, version=99))
    with pytest.raises(CheckpointError, match="version 99"):
        load_init(ReidModel("resnet18"), str(path))


def test_numpy_scalars_and_namespace_metadata_are_accepted(tmp_path: Path) -> None:
    # SpCL/MMT-style files keep best_mAP as a numpy float and often the argparse namespace.
    weights = resnet_weights()
    content = {"state_dict": weights, "best_mAP": np.float64(0.71), "args": argparse.Namespace(arch="resnet18")}
    path = save(tmp_path, "model_best.pth.tar", content)
    loaded = load_state_dict_file(path)
    assert loaded.keys() == weights.keys() and all(torch.equal(loaded[n], weights[n]) for n in weights)


@pytest.mark.parametrize("wrapper", ["state_dict_ema", "nested"])
def test_load_state_dict_file_unwraps_wrappers(tmp_path: Path, wrapper: str) -> None:
    inner = {"w": torch.rand(3), "b": torch.rand(2)}
    content = {"state_dict_ema": inner} if wrapper == "state_dict_ema" else {"model": {"state_dict": inner, "step": 4}}
    loaded = load_state_dict_file(save(tmp_path, "wrapped.pth", content))
    assert loaded.keys() == inner.keys() and all(torch.equal(loaded[n], inner[n]) for n in inner)


def test_shape_mismatch_is_reported_with_both_shapes_and_not_loaded(tmp_path: Path) -> None:
    weights = resnet_weights()
    weights["layer4.1.bn2.weight"] = torch.rand(3)
    path = save(tmp_path, "odd.pth", weights)
    model = ReidModel("resnet18")
    before = model.backbone.layer4[1].bn2.weight.clone()

    report = load_init(model, str(path))

    assert "layer4.1.bn2.weight (file 3 vs model 512)" in report.unexpected
    assert "layer4.1.bn2.weight" in report.missing
    assert torch.equal(model.backbone.layer4[1].bn2.weight, before)
    assert 0.9 < report.matched_fraction < 1.0
    assert "layer4.1.bn2.weight (file 3 vs model 512)" in str(report)


# --- refusals ---------------------------------------------------------------------------------------


def test_resnet18_moco_file_into_resnet50_is_refused_naming_file_arch_and_keys(tmp_path: Path) -> None:
    checkpoint, _ = moco_checkpoint("resnet18")
    path = save(tmp_path, "lup_r18.pth", checkpoint)
    model = ReidModel("resnet50")
    conv1_before = model.backbone.conv1.weight.clone()

    with pytest.raises(CheckpointError) as error:
        load_init(model, f"lup:{path}")

    message = str(error.value)
    assert str(path) in message and "resnet50" in message and "%" in message
    assert "the file says arch 'resnet18'" in message
    assert "layer1.0.conv1.weight (file 64×64×3×3 vs model 64×64×1×1)" in message
    assert torch.equal(model.backbone.conv1.weight, conv1_before)  # nothing half-loaded


def test_resnet18_file_into_resnet34_is_refused_although_every_file_key_fits(tmp_path: Path) -> None:
    # ResNet-18's names and shapes are a subset of ResNet-34's: only the matched fraction tells them apart.
    path = save(tmp_path, "r18.pth", resnet_weights())
    with pytest.raises(CheckpointError, match=r"resnet34 backbone: only \d+/\d+ tensors \(5\d%\)"):
        load_init(ReidModel("resnet34"), str(path))


def test_file_with_no_matching_key_is_refused(tmp_path: Path) -> None:
    path = save(tmp_path, "other.pth", {"transformer.blocks.0.attn.weight": torch.rand(4, 4)})
    with pytest.raises(CheckpointError, match=r"only 0/\d+ tensors"):
        load_init(ReidModel("resnet18"), str(path))


class _RunsCodeWhenUnpickled:
    """An object whose unpickling would create a directory (stands in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.mkdir, (str(self.marker),))


def test_pickled_code_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "code_ran"
    path = save(tmp_path, "evil.pth", {"state_dict": resnet_weights(), "payload": _RunsCodeWhenUnpickled(marker)})

    with pytest.raises(CheckpointError) as error:
        load_init(ReidModel("resnet18"), f"lup:{path}")

    message = str(error.value)
    assert str(path) in message and "pickled Python objects" in message and "refuses" in message
    assert "state_dict()" in message  # tells the user how to re-save
    assert not marker.exists()
    torch.load(path, weights_only=False)  # control: the file really does run code when trusted
    assert marker.exists()


@pytest.mark.parametrize(
    "content, named",
    [({"w": torch.rand(2), "hook": os.getcwd}, "getcwd"), (torch.nn.Linear(2, 2), "Linear")],
    ids=["function-reference", "pickled-module"],
)
def test_pickled_objects_are_refused_and_named(tmp_path: Path, content: object, named: str) -> None:
    path = save(tmp_path, "objects.pth", content)
    with pytest.raises(CheckpointError, match=f"pickled Python objects .*{named}"):
        load_state_dict_file(path)


@pytest.mark.parametrize(
    "content, expected",
    [
        (torch.rand(3), "holds a Tensor, expected a state dict"),
        ({"epoch": 3, "best_mAP": 0.5}, "contains no tensors"),
        (b"not a checkpoint", "not a readable PyTorch checkpoint"),
    ],
    ids=["tensor", "no-tensors", "corrupt"],
)
def test_unusable_content_is_refused(tmp_path: Path, content: object, expected: str) -> None:
    path = tmp_path / "bad.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(CheckpointError, match=expected) as error:
        load_state_dict_file(path)
    assert str(path) in str(error.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "weights" / "lup_moco_r50.pth"
    with pytest.raises(CheckpointError, match=f"{path} does not exist"):
        load_init(ReidModel("resnet18"), f"lup:{path}")


# --- init specs ---------------------------------------------------------------------------------------


def test_parse_init_spec_kinds_and_paths(tmp_path: Path) -> None:
    assert parse_init_spec("imagenet:/w/resnet50.pth") == ("imagenet", Path("/w/resnet50.pth"))
    assert parse_init_spec("LUP:/w/lup.pth") == ("lup", Path("/w/lup.pth"))
    assert parse_init_spec("upreid:w.pth") == ("upreid", Path("w.pth"))
    assert parse_init_spec("/runs/x/epoch_10.pth") == ("file", Path("/runs/x/epoch_10.pth"))
    assert parse_init_spec("C:/weights/lup.pth") == ("file", Path("C:/weights/lup.pth"))  # a drive, not a kind
    odd_name = tmp_path / "run:3.pth"
    odd_name.write_bytes(b"")
    assert parse_init_spec(str(odd_name)) == ("file", odd_name)
    assert lup_uses_extra_bn("lup:/w/lup.pth") and lup_uses_extra_bn("upreid:/w/u.pth") and lup_uses_extra_bn("moco:/w/b.pth")
    assert not lup_uses_extra_bn("imagenet:/w/r50.pth") and not lup_uses_extra_bn("/runs/x.pth")


@pytest.mark.parametrize("spec", ["simclr:/w/lup.pth", "lup:", ""])
def test_bad_init_specs_are_config_errors_listing_the_kinds(spec: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_init_spec(spec)
    message = str(error.value)
    if spec.startswith("simclr"):
        assert "unknown --init kind 'simclr'" in message
        assert all(kind in message for kind in ("imagenet:PATH", "lup:PATH", "upreid:PATH", "moco:PATH"))
    else:
        assert "--init" in message


def test_import_report_summary_lists_what_was_left_out() -> None:
    report = ImportReport(
        Path("w.pth"), "generic", loaded=["a"], missing=["b"], unexpected=["c (file 1 vs model 2)"],
        dropped_heads=["fc.weight"], matched_fraction=0.5, arch="resnet18",
    )
    text = str(report)
    assert "w.pth [generic]: loaded 1/2 tensors (50.0%) into resnet18" in text
    assert "missing (left at their initial values): b" in text and "dropped heads: fc.weight" in text


def test_imagenet_by_name_loads_torchvisions_file_from_the_torch_cache(tmp_path: Path, monkeypatch) -> None:
    """``--init imagenet``: the file torchvision would download, found in torch's cache (no network here)."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("downloaded although cached"))
    reference = randomised(torchvision.models.resnet18().state_dict(), seed=3)
    cached = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"  # torchvision's IMAGENET1K_V1 file name
    cached.parent.mkdir(parents=True)
    torch.save(reference, cached)
    assert parse_init_spec("imagenet") == ("imagenet", None) and not lup_uses_extra_bn("imagenet")
    model = ReidModel("resnet18")
    report = load_init(model, "imagenet")
    assert report.source == cached and not report.missing
    assert torch.equal(model.backbone.state_dict()["conv1.weight"], reference["conv1.weight"])


def test_imagenet_by_name_offline_names_the_file_and_where_to_put_it(tmp_path: Path, monkeypatch) -> None:
    from urllib.error import URLError

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(url, dst, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    expected = tmp_path / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    with pytest.raises(CheckpointError, match=f"{expected} is not there and could not be downloaded from "
                                              f"https://download.pytorch.org/models/resnet50-0676ba61.pth.*imagenet:PATH"):
        load_init(ReidModel("resnet50"), "imagenet")
