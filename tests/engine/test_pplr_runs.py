"""PPLR and camera-aware proxies inside the cluster -> adapt loop, on tiny data."""

import json

import numpy as np
import pytest

from uda_reid.data.datasets import load_dataset
from uda_reid.engine.epoch_records import load_epoch_records
from uda_reid.engine.loop import adapt
from uda_reid.errors import ConfigError
from uda_reid.evaluation.protocol import evaluate_model
from uda_reid.models.factory import model_from_weights
from tiny_reid_data import assert_resume_reaches_the_uninterrupted_run, tiny_adapt_config, write_two_domains


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_two_domains(tmp_path_factory.mktemp("data"))


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def pplr_config(**overrides):
    options = {"num_parts": 3, "agreement_k": 4, "aals_warmup_epochs": 1, **overrides.pop("options", {})}
    return tiny_adapt_config(target="dukemtmc", **{"adapt.method": "pplr", "method_options": options, **overrides})


def test_pplr_run_logs_its_losses_and_agreement_and_exports_a_plain_model(tmp_path, data_root):
    adapt(pplr_config(), tmp_path, data_root=data_root, progress=False)
    logged = rows(tmp_path)
    for row in logged[1:]:
        assert {"loss_pglr", "loss_aals", "loss_triplet", "agreement_mean", "agreement_part2"} <= set(row)
        assert 0.0 <= row["agreement_mean"] <= 1.0 and np.isfinite(row["loss"])
    records = load_epoch_records(tmp_path)
    assert sorted(records) == [1, 2]
    agreement = records[2]["score_agreement"]
    assert agreement.shape == (72, 3)
    assert logged[2]["agreement_mean"] == pytest.approx(float(agreement.mean()), abs=1e-4)
    assert (tmp_path / "agreement.png").exists()
    # the exported model is a plain ReidModel (no parts, no classifier): what evaluate reads
    model, saved = model_from_weights(str(tmp_path / "last.pt"))
    assert type(model).__name__ == "ReidModel" and model.num_classes == 0
    figures = evaluate_model(model, load_dataset("dukemtmc", data_root), saved.data, progress=False)
    assert figures["mAP"] == pytest.approx(logged[-1]["mAP"], abs=1e-6)


@pytest.mark.parametrize("mode", ["pplr", "cap"])
def test_camera_proxies_are_one_per_cluster_and_camera_and_add_a_finite_loss(tmp_path, data_root, mode):
    adapt(pplr_config(**{"camera_proxies.mode": mode, "camera_proxies.inter_start_epoch": 1}), tmp_path,
          data_root=data_root, progress=False)
    logged = rows(tmp_path)
    cameras = np.array([s.camid for s in load_dataset("dukemtmc", data_root).train])
    for epoch, record in load_epoch_records(tmp_path).items():
        labels = record["cluster_labels"]
        clustered = labels >= 0
        pairs = set(zip(labels[clustered].tolist(), cameras[clustered].tolist()))
        assert logged[epoch]["camera_proxies"] == len(pairs)
        assert np.isfinite(logged[epoch]["loss_camera"]) and logged[epoch]["loss_camera"] > 0


@pytest.mark.parametrize("method", ["baseline", "spcl"])
def test_other_methods_take_camera_proxies_too(tmp_path, data_root, method):
    config = tiny_adapt_config(target="dukemtmc", **{"adapt.method": method, "adapt.epochs": 1,
                                                    "camera_proxies.mode": "cap"})
    adapt(config, tmp_path, data_root=data_root, progress=False)
    row = rows(tmp_path)[1]
    assert row["loss_camera"] > 0 and row["camera_proxies"] >= row["clusters"]


def test_resumed_pplr_run_reaches_the_uninterrupted_result(tmp_path, data_root, monkeypatch):
    config = pplr_config(**{"adapt.epochs": 3, "camera_proxies.mode": "pplr"})
    assert_resume_reaches_the_uninterrupted_run(config, tmp_path, data_root, monkeypatch)


def test_unknown_camera_mode_is_named(tmp_path):
    with pytest.raises(ConfigError, match="camera_proxies.mode=both: camera_proxies.mode must be one of off, cap, pplr, got 'both'"):
        adapt(pplr_config(**{"camera_proxies.mode": "both"}), tmp_path, progress=False)
    with pytest.raises(ConfigError, match="unknown key 'camera_proxies'"):  # no longer a method's option
        adapt(pplr_config(options={"camera_proxies": "pplr"}), tmp_path, progress=False)
