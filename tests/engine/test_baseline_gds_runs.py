"""The clustering baseline and the GDS term inside the cluster -> adapt loop, on tiny data."""

import json

import numpy as np
import pytest
import torch

from uda_reid.models.checkpoints import load_checkpoint
from uda_reid.engine.loop import TrainingLoop, adapt
from uda_reid.errors import ConfigError
from tiny_reid_data import assert_resume_reaches_the_uninterrupted_run, tiny_adapt_config, write_two_domains


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_two_domains(tmp_path_factory.mktemp("data"))


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


BASELINE_GDS_H = {"adapt.method": "baseline", "gds.enabled": True, "gds.hard_mining": True}


def test_baseline_with_gds_h_logs_losses_and_global_statistics_and_draws_the_distance_histograms(tmp_path, data_root):
    config = tiny_adapt_config(source="market1501", target="dukemtmc", **BASELINE_GDS_H)
    adapt(config, tmp_path, data_root=data_root, progress=False)
    logged = rows(tmp_path)
    for row in logged[1:]:
        assert {"loss_id", "loss_triplet", "loss_gds", "loss_gds_hard", "iterations"} <= set(row)
        assert "loss_source" not in row  # the baseline trains on target batches only
        # each figure is logged to 5 decimals: tail, mean and 3 x std round by up to 0.5e-5 + 0.5e-5 + 1.5e-5
        assert row["gds_tail_pos"] == pytest.approx(row["gds_mean_pos"] + 3 * row["gds_std_pos"], abs=2.6e-5)
        assert row["gds_tail_neg"] == pytest.approx(row["gds_mean_neg"] - 3 * row["gds_std_neg"], abs=2.6e-5)
    # the global statistics moved away from the initial 0.5 / sqrt(1/6) and are kept in the checkpoint
    assert logged[-1]["gds_mean_neg"] != pytest.approx(0.5, abs=1e-3)
    saved = load_checkpoint(tmp_path / "last.pt")["train_state"]["add_ons"]["gds"]
    assert saved["mean"].tolist() == pytest.approx([logged[-1]["gds_mean_pos"], logged[-1]["gds_mean_neg"]], abs=1e-5)
    histograms = json.loads((tmp_path / "distances.json").read_text())
    # tiny target: 12 train ids x 6 images; 8 query ids x 1 against 8 x 6 gallery images
    assert histograms["train"]["pos_pairs"] == 12 * 15 and histograms["train"]["neg_pairs"] == 72 * 71 // 2 - 180
    assert sum(histograms["test"]["positive"]) + sum(histograms["test"]["negative"]) == histograms["test"]["pos_pairs"] + histograms["test"]["neg_pairs"]
    assert (tmp_path / "distances.png").stat().st_size > 0 and (tmp_path / "metrics.png").exists()


def test_classifier_starts_from_the_cluster_centroids_each_epoch_and_is_trained(tmp_path, data_root, monkeypatch):
    import uda_reid.methods.baseline as baseline

    made = []
    original = baseline.centroid_classifier

    def recording(features, labels, device):
        classifier = original(features, labels, device)
        made.append((features.clone(), labels.copy(), classifier, classifier.weight.detach().clone()))
        return classifier

    monkeypatch.setattr(baseline, "centroid_classifier", recording)
    loop = TrainingLoop(tiny_adapt_config(target="dukemtmc", **{"adapt.method": "baseline"}), tmp_path,
                          data_root=data_root, progress=False)
    loop.run()
    assert len(made) == 2  # one fresh classifier per epoch
    for features, labels, classifier, initial in made:
        for cluster in range(initial.shape[0]):  # row c = normalised mean of cluster c's features
            members = torch.nn.functional.normalize(features[torch.from_numpy(labels == cluster)], dim=1)
            expected = torch.nn.functional.normalize(members.mean(dim=0), dim=0)
            assert torch.allclose(initial[cluster], expected, atol=1e-5)
        assert not torch.equal(classifier.weight.detach(), initial)  # the optimiser trained it
    # between epochs the optimiser holds no head, so checkpoints do not depend on the cluster count
    state = load_checkpoint(tmp_path / "last.pt")["train_state"]["optimizer"]
    assert [len(g["params"]) for g in state["param_groups"]][1] == 0


def test_outliers_sit_the_epoch_out(tmp_path, data_root, monkeypatch):
    import uda_reid.engine.epoch_labels as epoch_labels
    import uda_reid.engine.loop as loop
    from uda_reid.clustering import ClusterResult

    labels = np.repeat(np.arange(12), 6)
    labels[::6] = -1  # one image of every identity is an outlier
    monkeypatch.setattr(epoch_labels, "cluster_stage", lambda features, **_: ClusterResult(labels, 12, 12))
    drawn = []
    original = loop.ImageDataset.__getitem__

    def spy(self, index):
        item = original(self, index)
        if self.labels is not None:  # the training set, whose "pid" is the pseudo-label
            drawn.append(int(item["pid"]))
        return item

    monkeypatch.setattr(loop.ImageDataset, "__getitem__", spy)
    adapt(tiny_adapt_config(target="dukemtmc", **{"adapt.method": "baseline", "adapt.epochs": 1}), tmp_path,
          data_root=data_root, progress=False)
    assert drawn and -1 not in drawn
    assert rows(tmp_path)[1]["unclustered"] == 12


def test_resumed_baseline_gds_run_reaches_the_uninterrupted_result(tmp_path, data_root, monkeypatch):
    config = tiny_adapt_config(source="market1501", target="dukemtmc", **BASELINE_GDS_H, **{"adapt.epochs": 3})
    assert_resume_reaches_the_uninterrupted_run(config, tmp_path, data_root, monkeypatch)


def test_gds_runs_on_spcl_too(tmp_path, data_root):
    adapt(tiny_adapt_config(target="dukemtmc", **{"gds.enabled": True, "adapt.epochs": 1}), tmp_path,
          data_root=data_root, progress=False)
    row = rows(tmp_path)[1]
    assert {"loss_target", "loss_gds", "gds_mean_pos"} <= set(row) and "loss_gds_hard" not in row
    assert np.isfinite(row["loss"])


def test_bad_gds_and_source_optim_keys_are_named_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="gds.pairs must be 'all' or 'hardest', got 'some'"):
        TrainingLoop(tiny_adapt_config(target="dukemtmc", **{"gds.enabled": True, "gds.pairs": "some"}), tmp_path)
    with pytest.raises(ConfigError, match="adapt.source_optim: unknown key 'learning_rate'"):
        TrainingLoop(tiny_adapt_config(target="dukemtmc", **{"adapt.source_optim": {"learning_rate": 1}}), tmp_path)
