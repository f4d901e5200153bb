"""One loop for every training: supervised runs, the UDA source stage, and kills at any moment.

A kill is simulated by raising KeyboardInterrupt at a chosen point (after an epoch's row, after its
checkpoint, in the middle of writing a checkpoint); the resumed run must end where an
uninterrupted one does: same rows, same weights.
"""

import json
import os
import stat

import pytest
import torch
from tiny_reid_data import metrics_rows, tiny_adapt_config, write_two_domains

from uda_reid.engine import loop, run_log
from uda_reid.models import checkpoints
from uda_reid.models.checkpoints import load_checkpoint
from uda_reid.engine.loop import adapt, train_supervised
from uda_reid.fileio import atomic_write_text
from uda_reid.models.factory import model_from_weights


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_two_domains(tmp_path_factory.mktemp("data"))


def supervised_config(**overrides):
    return tiny_adapt_config(dataset="market1501",
                             **{"train.epochs": 3, "train.iters_per_epoch": 2, "train.eval_every": 2, **overrides})


def uda_with_source_stage(**overrides):
    return tiny_adapt_config(source="market1501", target="dukemtmc",
                             **{"adapt.source_pretrain_epochs": 3, "train.iters_per_epoch": 2, "train.eval_every": 1,
                                **overrides})


def comparable(run_dir):
    return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in metrics_rows(run_dir)]


def same_weights(a, b):
    a, b = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Killed(KeyboardInterrupt):
    pass


def kill_after_row(monkeypatch, folder, epoch):
    """Stop the run right after ``folder``'s metrics row of ``epoch`` is written (before its checkpoint)."""
    append = run_log.RunLog.append

    def killed(self, row):
        append(self, row)
        if self.run_dir == folder and row["epoch"] == epoch:
            raise Killed

    monkeypatch.setattr(run_log.RunLog, "append", killed)


def kill_after_checkpoint(monkeypatch, folder, epoch):
    """Stop the run right after ``folder/last.pt`` of ``epoch`` (counted from 1) is written."""
    save = checkpoints.save_checkpoint

    def killed(path, config, saved_epoch, **state):
        save(path, config, saved_epoch, **state)
        if path == folder / "last.pt" and saved_epoch + 1 == epoch:
            raise Killed

    monkeypatch.setattr(loop, "save_checkpoint", killed)


def kill_during_checkpoint_write(monkeypatch, folder, epoch):
    """Stop the run while ``folder/last.pt`` of ``epoch`` is half written."""
    save = checkpoints.save_checkpoint

    def killed(path, config, saved_epoch, **state):
        if path == folder / "last.pt" and saved_epoch + 1 == epoch:
            def half_written(obj, target):
                open(target, "wb").write(b"half a checkpoint")
                raise Killed
            monkeypatch.setattr(checkpoints, "atomic_torch_save", _keep_temporary(half_written))
        save(path, config, saved_epoch, **state)

    monkeypatch.setattr(loop, "save_checkpoint", killed)


def _keep_temporary(write):
    """An atomic save whose process dies mid-write: the temporary file stays (no clean-up runs)."""
    import tempfile

    def save(obj, path):
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(obj, name)

    return save


def test_supervised_run_logs_every_epoch_and_best_holds_only_the_exported_model(tmp_path, data_root):
    summary = train_supervised(supervised_config(), tmp_path, data_root=data_root, progress=False)
    logged = metrics_rows(tmp_path)
    assert [r["epoch"] for r in logged] == [1, 2, 3]  # nothing to evaluate before training from scratch
    assert {"loss_id", "loss_triplet", "train_acc", "lr", "iterations"} <= set(logged[0])
    assert "mAP" not in logged[0] and "mAP" in logged[1] and "mAP" in logged[2]  # every 2 epochs and the last
    assert summary["last"]["mAP"] == logged[2]["mAP"] and summary["target"] == "market1501"
    best = load_checkpoint(tmp_path / "best.pt")
    assert "train_state" not in best and best["num_classes"] == 12  # the 12 training identities
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["train_state"]["model"] is None  # the trained model is the exported one: stored once
    model, _ = model_from_weights(str(tmp_path / "best.pt"))
    assert model.num_classes == 12


def test_an_epoch_of_zero_iterations_is_one_pass_over_the_identities(tmp_path, data_root):
    train_supervised(supervised_config(**{"train.epochs": 1, "train.iters_per_epoch": 0}), tmp_path,
                     data_root=data_root, progress=False)
    assert metrics_rows(tmp_path)[0]["iterations"] == 12 * 4 // 16  # 12 identities × K 4 / batch 16


@pytest.mark.parametrize("kill", [kill_after_row, kill_after_checkpoint, kill_during_checkpoint_write])
def test_train_resumed_after_a_kill_ends_like_an_uninterrupted_run(tmp_path, data_root, monkeypatch, kill):
    config = supervised_config()
    train_supervised(config, tmp_path / "full", data_root=data_root, progress=False)
    with monkeypatch.context() as patch:
        kill(patch, tmp_path / "cut", 2)
        with pytest.raises(Killed):
            train_supervised(config, tmp_path / "cut", data_root=data_root, progress=False)
    if kill is kill_during_checkpoint_write:
        assert list((tmp_path / "cut").glob(".last.pt.*.tmp"))  # what a kill mid-write leaves behind
    train_supervised(config, tmp_path / "cut", data_root=data_root, progress=False, resume=True)
    assert not list((tmp_path / "cut").glob(".*.tmp"))  # removed when the run resumed
    assert comparable(tmp_path / "cut") == comparable(tmp_path / "full")  # every epoch once
    assert same_weights(tmp_path / "cut" / "last.pt", tmp_path / "full" / "last.pt")


def test_uda_run_killed_in_its_source_stage_resumes_the_stage_then_adapts_as_uninterrupted(tmp_path, data_root,
                                                                                           monkeypatch):
    config = uda_with_source_stage()
    adapt(config, tmp_path / "full", data_root=data_root, progress=False)
    stage = tmp_path / "cut" / "source_pretrain"
    with monkeypatch.context() as patch:
        kill_after_checkpoint(patch, stage, 2)
        with pytest.raises(Killed):
            adapt(config, tmp_path / "cut", data_root=data_root, progress=False)
    assert (stage / "best.pt").exists() and not (stage / "summary.json").exists()  # a partial stage
    adapt(config, tmp_path / "cut", data_root=data_root, progress=False, resume=True)
    assert comparable(stage) == comparable(tmp_path / "full" / "source_pretrain")
    assert comparable(tmp_path / "cut") == comparable(tmp_path / "full")
    assert same_weights(tmp_path / "cut" / "last.pt", tmp_path / "full" / "last.pt")


def test_resume_of_a_finished_run_changes_nothing(tmp_path, data_root):
    config = supervised_config(**{"train.epochs": 1})
    first = train_supervised(config, tmp_path, data_root=data_root, progress=False)
    written = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and p.suffix != ".txt"}
    again = train_supervised(config, tmp_path, data_root=data_root, progress=False, resume=True)
    assert again == json.loads(json.dumps(first)) and again["last"]
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and p.suffix != ".txt"} == written


def test_atomically_written_files_get_the_permissions_of_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "summary.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "summary.json").stat().st_mode) == 0o644  # readable by the group, not 0600
