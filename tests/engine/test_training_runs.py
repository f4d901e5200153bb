"""One loop for every training: supervised runs, the UDA source stage, pre-training, and kills at any moment.

A kill is simulated by raising KeyboardInterrupt at a chosen point (after an epoch's row, after its
checkpoint, in the middle of writing a checkpoint); the resumed run must end where an
uninterrupted one does: same rows, same weights.
"""

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest
import torch
from tiny_reid_data import metrics_rows, tiny_adapt_config, tiny_pretrain_config, write_two_domains

from uda_reid.engine import run_checkpoints, run_log
from uda_reid.models import checkpoints
from uda_reid.models.checkpoints import load_checkpoint
from uda_reid.config import save_config
from uda_reid.engine.loop import adapt, train_supervised
from uda_reid.engine.pretrain import pretrain
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

    monkeypatch.setattr(run_checkpoints, "save_checkpoint", killed)


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

    monkeypatch.setattr(run_checkpoints, "save_checkpoint", killed)


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


def same_pretraining_state(a, b):
    """Rows, exported backbone, trained encoder, key encoder, queues and backbone.pth all equal."""
    assert comparable(a) == comparable(b)
    assert same_weights(a / "last.pt", b / "last.pt")
    states = [load_checkpoint(run / "last.pt")["train_state"] for run in (a, b)]
    for part in ("model", "method"):
        assert states[0][part].keys() == states[1][part].keys()
        assert all(torch.equal(states[0][part][k], states[1][part][k]) for k in states[0][part]), part
    files = [torch.load(run / "backbone.pth", weights_only=True) for run in (a, b)]
    assert all(torch.equal(files[0][k], files[1][k]) for k in files[0])


@pytest.mark.parametrize("kill", [kill_after_row, kill_after_checkpoint, kill_during_checkpoint_write])
def test_pretraining_resumed_after_a_kill_ends_like_an_uninterrupted_run(tmp_path, data_root, monkeypatch, kill):
    config = tiny_pretrain_config(**{"pretrain.method": "upreid", "pretrain.epochs": 3})
    pretrain(config, tmp_path / "full", data_root=data_root, progress=False)
    with monkeypatch.context() as patch:
        kill(patch, tmp_path / "cut", 2)
        with pytest.raises(Killed):
            pretrain(config, tmp_path / "cut", data_root=data_root, progress=False)
    pretrain(config, tmp_path / "cut", data_root=data_root, progress=False, resume=True)
    same_pretraining_state(tmp_path / "cut", tmp_path / "full")


@pytest.mark.slow
def test_pretraining_killed_by_sigkill_mid_run_resumes_to_the_uninterrupted_weights(tmp_path, data_root):
    """A real kill -9 of ``udareid pretrain`` at whatever moment the second epoch has reached."""
    config = tiny_pretrain_config(**{"pretrain.method": "moco", "pretrain.epochs": 3, "pretrain.iters_per_epoch": 4})
    recipe = tmp_path / "tiny.yaml"
    save_config(config, recipe)

    def command(out, *extra):
        return [sys.executable, "-m", "uda_reid.cli", "pretrain", "--dataset", "market", "--dataset", "duke",
                "--recipe", str(recipe), "--data-root", str(data_root), "--out", str(out), "--quiet", *extra]

    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(command(tmp_path / "full"), check=True, capture_output=True, env=environment, timeout=600)
    process = subprocess.Popen(command(tmp_path / "cut"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=environment)
    rows = tmp_path / "cut" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (rows.exists() and rows.read_text().count("\n") >= 1) and process.poll() is None:
        assert time.monotonic() < deadline, "the first epoch never finished"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)  # in epoch 2, or between epoch 1's row and its last.pt
    process.wait()
    assert process.returncode == -signal.SIGKILL
    resumed = subprocess.run(command(tmp_path / "cut", "--resume"), capture_output=True, text=True, env=environment,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    same_pretraining_state(tmp_path / "cut", tmp_path / "full")
