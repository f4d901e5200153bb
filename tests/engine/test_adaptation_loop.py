"""The cluster -> adapt loop end to end on tiny data: UDA and USL runs, resume, and bad input."""

import json

import numpy as np
import pytest
import torch
from tiny_reid_data import assert_resume_reaches_the_uninterrupted_run, tiny_adapt_config, write_two_domains

from uda_reid.clustering import ClusterResult
from uda_reid.config import apply_overrides
from uda_reid.data.datasets import load_dataset
from uda_reid.models.checkpoints import load_checkpoint
from uda_reid.engine.loop import adapt
from uda_reid.errors import TrainingDivergedError
from uda_reid.errors import CheckpointError, ConfigError
from uda_reid.evaluation.protocol import evaluate_model
from uda_reid.methods import StepOutput
from uda_reid.models.factory import model_from_weights


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_two_domains(tmp_path_factory.mktemp("data"))


tiny_config = tiny_adapt_config


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_uda_run_logs_direct_transfer_then_epochs_and_writes_loadable_checkpoints(tmp_path, data_root):
    config = tiny_config(source="market1501", target="dukemtmc", **{"adapt.bn_groups": 2})
    summary = adapt(config, tmp_path, data_root=data_root, progress=False)
    logged = rows(tmp_path)
    assert [r["epoch"] for r in logged] == [0, 1, 2]
    assert set(logged[0]) == {"epoch", "mAP", "rank1", "rank5", "rank10"}  # direct transfer, before adapting
    for row in logged[1:]:
        assert {"clusters", "outliers", "unclustered", "cluster_seconds", "loss_source", "loss_target", "mAP"} <= set(row)
        assert np.isfinite(row["loss"])
    assert summary["initial"]["mAP"] == logged[0]["mAP"]
    assert (tmp_path / "config.yaml").exists() and (tmp_path / "metrics.png").exists()
    # last.pt holds a plain model that evaluate/--init read; its figures are the last row's.
    model, saved_config = model_from_weights(str(tmp_path / "last.pt"))
    figures = evaluate_model(model, load_dataset("dukemtmc", data_root), saved_config.data, progress=False)
    assert figures["mAP"] == pytest.approx(logged[-1]["mAP"], abs=1e-6)


def test_usl_run_trains_target_only_and_says_which_setting_spcl_ignores(tmp_path, data_root, capsys):
    adapt(tiny_config(target="dukemtmc", **{"clustering.clusterer": "hdbscan"}), tmp_path, data_root=data_root, progress=False)
    logged = rows(tmp_path)
    assert "loss_source" not in logged[-1] and logged[-1]["loss_target"] > 0
    note = "note: method_options.self_paced is ignored with clustering.clusterer hdbscan"
    assert note in (tmp_path / "log.txt").read_text() and note in capsys.readouterr().err


def test_resume_after_a_kill_reaches_the_uninterrupted_result(tmp_path, data_root, monkeypatch):
    config = tiny_config(source="market1501", target="dukemtmc", **{"adapt.epochs": 3})
    assert_resume_reaches_the_uninterrupted_run(config, tmp_path, data_root, monkeypatch)


def test_resume_with_another_config_is_refused(tmp_path, data_root):
    adapt(tiny_config(target="dukemtmc", **{"adapt.epochs": 1}), tmp_path, data_root=data_root, progress=False)
    with pytest.raises(CheckpointError, match=r"clustering.eps: run 0.6, now 0.5"):
        adapt(tiny_config(target="dukemtmc", **{"clustering.eps": 0.5}), tmp_path, data_root=data_root,
              progress=False, resume=True)


def test_all_outlier_and_single_cluster_epochs_go_on_with_instances(tmp_path, data_root, monkeypatch):
    from uda_reid.engine import epoch_labels, loop  # noqa: F401

    outcomes = iter([np.full(72, -1), np.zeros(72, dtype=np.int64)])  # epoch 1: all outliers; epoch 2: one cluster

    def fake_stage(features, **kwargs):
        labels = next(outcomes)
        clusters = int(labels.max()) + 1 if labels.max() >= 0 else 0
        return ClusterResult(labels=labels, num_clusters=clusters, num_outliers=int((labels < 0).sum()))

    monkeypatch.setattr(epoch_labels, "cluster_stage", fake_stage)
    adapt(tiny_config(target="dukemtmc"), tmp_path, data_root=data_root, progress=False)
    logged = rows(tmp_path)
    assert logged[1]["clusters"] == 0 and logged[1]["unclustered"] == 72 and np.isfinite(logged[1]["loss"])
    assert logged[2]["clusters"] == 1 and logged[2]["outliers"] == 0 and np.isfinite(logged[2]["loss"])
    log_text = (tmp_path / "log.txt").read_text()
    assert "every target image is an outlier" in log_text and "all target images fell into one cluster" in log_text


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path, data_root, monkeypatch):
    from uda_reid.methods.spcl import SpCL

    config = tiny_config(target="dukemtmc", **{"adapt.epochs": 2})
    adapt(config, tmp_path, data_root=data_root, progress=False)
    good = load_checkpoint(tmp_path / "last.pt")
    original = SpCL.training_step

    def nan_step(self, ctx, batch):
        step = original(self, ctx, batch)
        return StepOutput({name: value * float("nan") for name, value in step.losses.items()}, step.target_features)

    monkeypatch.setattr(SpCL, "training_step", nan_step)
    with pytest.raises(TrainingDivergedError, match=r"loss became nan at epoch 3, iteration 1 \(loss_target nan\)"):
        adapt(apply_overrides(config, {"adapt.epochs": 3}), tmp_path, data_root=data_root, progress=False, resume=True)
    kept = load_checkpoint(tmp_path / "last.pt")
    assert kept["epoch"] == good["epoch"]
    assert all(torch.equal(kept["model"][k], good["model"][k]) for k in good["model"])


def test_unknown_method_clusterer_and_method_option_are_named(tmp_path):
    with pytest.raises(ConfigError, match="adapt.method must be one of baseline, cap, cluster_contrast, pplr, spcl"):
        adapt(tiny_config(target="dukemtmc", **{"adapt.method": "mmt"}), tmp_path, progress=False)
    with pytest.raises(ConfigError, match="method_options: unknown key 'temprature'"):
        adapt(tiny_config(target="dukemtmc", method_options={"temprature": 0.1}), tmp_path, progress=False)
    with pytest.raises(ConfigError, match="needs a target dataset"):
        adapt(tiny_config(), tmp_path, progress=False)
    # before any work: no data root is given, so a later check would fail on the missing dataset instead
    with pytest.raises(ConfigError, match="clustering.clusterer must be one of dbscan, hdbscan, kmeans, got 'optics'"):
        adapt(tiny_config(target="dukemtmc", **{"clustering.clusterer": "optics"}), tmp_path, progress=False)
    with pytest.raises(ConfigError, match="clustering.knn must be one of auto, "):
        adapt(tiny_config(target="dukemtmc", **{"clustering.knn": "fast"}), tmp_path, progress=False)


def test_spcl_batches_give_each_unclustered_instance_one_slot(tmp_path, data_root, monkeypatch):
    """SpCL's reference sampler: a cluster gives K images, an un-clustered instance one, so most of
    a batch is clustered images; the old P×K sampler repeated every instance K times."""
    from uda_reid.engine import epoch_labels, loop  # noqa: F401
    from uda_reid.methods.spcl import SpCL

    cluster_labels = np.full(72, -1)
    cluster_labels[:36] = np.repeat(np.arange(6), 6)  # six clusters of six images, 36 un-clustered instances

    def fake_stage(features, **kwargs):
        return ClusterResult(labels=cluster_labels.copy(), num_clusters=6, num_outliers=36)

    seen = []
    original = SpCL.training_step

    def recording(self, ctx, batch):
        seen.append(batch["target"]["label"].numpy().copy())
        return original(self, ctx, batch)

    monkeypatch.setattr(epoch_labels, "cluster_stage", fake_stage)
    monkeypatch.setattr(SpCL, "training_step", recording)
    adapt(tiny_config(target="dukemtmc", **{"adapt.epochs": 1, "adapt.iters_per_epoch": 8}), tmp_path,
          data_root=data_root, progress=False)
    drawn = np.concatenate(seen)
    assert len(seen) == 8
    for labels in seen:
        instances, counts = np.unique(labels[labels >= 6], return_counts=True)
        assert (counts == 1).all()  # no instance repeated within a batch
    # one pass: 6 clusters × 4 + 36 instances = 60 images, of which 24 clustered (40 %)
    assert 0.3 < (drawn < 6).mean() < 0.5
