"""Atomic writes keep the old file on failure; unsafe or mismatched checkpoints are refused."""

import json

import pytest
import torch

from uda_reid.config import RunConfig, apply_overrides
from uda_reid.models.checkpoints import load_checkpoint, save_checkpoint
from uda_reid.engine.run_log import RunLog
from uda_reid.errors import CheckpointError
from uda_reid.fileio import atomic_path, atomic_write_text, safe_torch_load


def test_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "last.pt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_checkpoint_round_trip(tmp_path):
    config = RunConfig()
    save_checkpoint(tmp_path / "c.pt", config, 3, model={"w": torch.arange(3.0)}, best_mAP=12.5)
    payload = load_checkpoint(tmp_path / "c.pt", expect_config=config)
    assert payload["epoch"] == 3 and payload["best_mAP"] == 12.5
    assert torch.equal(payload["model"]["w"], torch.arange(3.0))


def test_resume_with_another_config_is_refused_naming_the_difference(tmp_path):
    save_checkpoint(tmp_path / "c.pt", RunConfig(), 0, model={})
    other = apply_overrides(RunConfig(), {"optim.lr": 0.1, "train.epochs": 3, "device": "cpu"})
    with pytest.raises(CheckpointError, match=r"another configuration \(optim.lr: run 0.00035, now 0.1\)"):
        load_checkpoint(tmp_path / "c.pt", expect_config=other)
    # epochs and device may change on resume
    load_checkpoint(tmp_path / "c.pt", expect_config=apply_overrides(RunConfig(), {"train.epochs": 3}))


class _Payload:
    def __reduce__(self):
        return (open, ("should_not_exist.txt", "w"))


def test_pickled_code_is_refused_and_never_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"model": _Payload()}, path)
    with pytest.raises(CheckpointError, match=r"evil.pt contains pickled Python objects \(io.open\)"):
        safe_torch_load(path)
    assert not (tmp_path / "should_not_exist.txt").exists()


def test_missing_and_foreign_checkpoints_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pt does not exist"):
        safe_torch_load(tmp_path / "nope.pt")
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="plain.pt is not a uda_reid run checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")


def test_run_log_writes_jsonl_plot_and_truncates_on_resume(tmp_path):
    log = RunLog(tmp_path)
    for epoch in range(1, 4):
        log.append({"epoch": epoch, "loss": 1.0 / epoch, "mAP": 10.0 * epoch})
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert (tmp_path / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    assert "mAP=30" in (tmp_path / "log.txt").read_text()
    resumed = RunLog(tmp_path, resume=True)
    resumed.truncate_after(1)
    assert [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1]


def test_tensorboard_shows_each_rows_numbers_by_epoch_and_drops_the_epochs_a_resume_redoes(tmp_path):
    from PIL import Image
    from tiny_reid_data import tensorboard_events

    log = RunLog(tmp_path, tensorboard=True)
    for epoch in range(0, 4):
        log.append({"epoch": epoch, "loss": 1.0 / (epoch + 1), "mAP": 10.0 * epoch, "clusters": 5 + epoch,
                    "lr": 0.1, "method": "spcl"})
    Image.new("RGB", (40, 30), "red").save(tmp_path / "grid.png")
    log.image("clusters", tmp_path / "grid.png", 3)
    log.close()
    shown = tensorboard_events(tmp_path)
    assert shown["retrieval/mAP"] == [(0, 0.0), (1, 10.0), (2, 20.0), (3, 30.0)]
    assert [step for step, _ in shown["loss/loss"]] == [0, 1, 2, 3] and shown["run/lr"][0] == (0, pytest.approx(0.1))
    assert shown["clusters/clusters"][-1] == (3, 8.0) and shown["clusters"] == [(3, 40)]
    resumed = RunLog(tmp_path, resume=True, tensorboard=True)  # killed after epoch 1's checkpoint: 2, 3 redone
    resumed.truncate_after(1)
    resumed.append({"epoch": 2, "mAP": 99.0})
    resumed.close()
    assert tensorboard_events(tmp_path)["retrieval/mAP"] == [(0, 0.0), (1, 10.0), (2, 99.0)]


def test_without_tensorboard_no_event_file_is_written(tmp_path):
    log = RunLog(tmp_path, tensorboard=False)
    log.append({"epoch": 1, "mAP": 1.0})
    assert not (tmp_path / "tensorboard").exists() and (tmp_path / "metrics.jsonl").exists()


def test_metrics_plot_shows_equal_outlier_counts_once_and_whole_epochs(tmp_path, monkeypatch):
    from uda_reid.engine import run_log

    figures = []
    monkeypatch.setattr(run_log, "save_figure", lambda fig, path: figures.append(fig))
    log = RunLog(tmp_path)
    log.append({"epoch": 1, "clusters": 20, "outliers": 7, "unclustered": 7, "mAP": 5.0})
    panels = {ax.get_title(): ax for ax in figures[-1].axes}
    labels = [line.get_label() for line in panels["clusters"].lines]
    assert labels == ["clusters", "outliers (= unclustered)"]  # not a line hidden under another
    assert panels["clusters"].get_legend().get_texts()[1].get_text() == "outliers (= unclustered)"
    low, high = panels["retrieval (%)"].get_xlim()
    assert low <= 0.5 and high >= 1.5  # one epoch: not an axis of 0.95-1.05
    log.append({"epoch": 2, "clusters": 22, "outliers": 9, "unclustered": 12})
    labels = [line.get_label() for line in {ax.get_title(): ax for ax in figures[-1].axes}["clusters"].lines]
    assert labels == ["clusters", "outliers", "unclustered"]
