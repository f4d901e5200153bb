"""The run folder belongs to the user: refused commands change nothing, their own files are never
replaced unasked, a failed start leaves nothing behind, one process at a time, and Ctrl-C / kill end
with a line saying how to continue (uda_reid.run_folder, uda_reid.stopping)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from tiny_reid_data import metrics_rows, write_two_domains

from uda_reid import fileio
from uda_reid.cli import cli
from uda_reid.errors import ConfigError
from uda_reid.run_folder import LOCK_NAME, run_lock
from uda_reid.stopping import Stopped, stop_on_signals

TINY = ["device=cpu", "data.height=32", "data.width=16", "data.batch_size=16", "data.workers=0", "data.pad=2",
        "model.arch=resnet18", "optim.warmup_epochs=0", "train.iters_per_epoch=2", "train.eval_every=1"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_two_domains(tmp_path_factory.mktemp("data"))


def train_args(data_root, out, *extra, epochs: int = 1) -> list[str]:
    return ["train", "--dataset", "market1501", "--data-root", str(data_root), "--out", str(out), "--epochs",
            str(epochs), "--quiet", *[a for item in TINY for a in ("--set", item)], *extra]


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``folder``: (modification time, content hash)."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_refused_resume_changes_nothing_on_disk(tmp_path, data_root):
    out = tmp_path / "run"
    assert CliRunner().invoke(cli, train_args(data_root, out)).exit_code == 0
    before = snapshot(out)
    refused = CliRunner().invoke(cli, train_args(data_root, out, "--resume", "--set", "optim.lr=0.5"))
    assert refused.exit_code == 1 and "optim.lr: run" in refused.output, refused.output
    assert snapshot(out) == before  # config.yaml, log.txt, tensorboard/ included


def test_a_resume_of_a_run_stopped_before_its_first_checkpoint_compares_its_config_yaml(tmp_path, data_root):
    out = tmp_path / "run"
    assert CliRunner().invoke(cli, train_args(data_root, out)).exit_code == 0
    (out / "last.pt").unlink()  # as if stopped before the first checkpoint, with its config.yaml kept
    before = snapshot(out)
    refused = CliRunner().invoke(cli, train_args(data_root, out, "--resume", "--set", "optim.lr=0.5"))
    assert refused.exit_code == 1 and f"cannot resume from {out / 'config.yaml'}" in refused.output, refused.output
    assert snapshot(out) == before


@pytest.mark.parametrize("names", [["best.pt", "metrics.png"], ["notes.txt"], ["my_runs/"]])
def test_an_out_folder_holding_the_users_files_is_refused_without_overwrite(tmp_path, data_root, names):
    out = tmp_path / "mine"
    out.mkdir()
    for name in names:
        (out / name.rstrip("/")).mkdir() if name.endswith("/") else (out / name).write_bytes(b"the user's own " + name.encode())
    before = snapshot(out)
    refused = CliRunner().invoke(cli, train_args(data_root, out))
    assert refused.exit_code == 1 and "holds files uda_reid did not write" in refused.output
    assert names[0].rstrip("/") in refused.output and "--overwrite" in refused.output
    assert snapshot(out) == before and sorted(p.name for p in out.iterdir()) == sorted(n.rstrip("/") for n in names)
    allowed = CliRunner().invoke(cli, train_args(data_root, out, "--overwrite"))
    assert allowed.exit_code == 0, allowed.output
    assert (out / "config.yaml").exists() and all((out / name.rstrip("/")).exists() for name in names)


def test_a_run_that_fails_before_its_first_epoch_leaves_nothing_and_can_be_rerun(tmp_path, data_root):
    out = tmp_path / "run"
    bad = tmp_path / "weights.pth"
    bad.write_text("not weights")
    failed = CliRunner().invoke(cli, train_args(data_root, out, "--init", str(bad)))
    assert failed.exit_code == 1 and "not a readable PyTorch checkpoint" in failed.output
    assert not out.exists()
    # in a folder that held the user's files (with --overwrite): theirs stay, the run's are gone
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    failed = CliRunner().invoke(cli, train_args(data_root, out, "--init", str(bad), "--overwrite"))
    assert failed.exit_code == 1 and sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert CliRunner().invoke(cli, train_args(data_root, tmp_path / "run2")).exit_code == 0


def test_a_second_process_on_the_same_run_folder_is_refused_at_once(tmp_path, data_root):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text(f"{os.getppid()} {os.uname().nodename}\n")  # a live process holds it
    started = time.perf_counter()
    refused = CliRunner().invoke(cli, train_args(data_root, out))
    assert refused.exit_code == 1 and "is in use by another udareid run" in refused.output, refused.output
    assert f"process {os.getppid()}" in refused.output and time.perf_counter() - started < 10
    assert (out / LOCK_NAME).exists()  # the other process's lock is left alone


def test_a_stale_lock_of_a_killed_process_is_taken_over_and_released(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text(f"{dead.stdout.strip()} {os.uname().nodename}\n")
    with run_lock(out) as note:
        assert "is gone; lock taken over" in note
        assert (out / LOCK_NAME).read_text().split()[0] == str(os.getpid())
        with pytest.raises(ConfigError, match="in use by another udareid run"):
            with run_lock(out):
                pass
    assert not (out / LOCK_NAME).exists()


def test_a_signal_during_an_atomic_write_stops_after_the_write_has_finished(tmp_path):
    target = tmp_path / "last.pt"
    with pytest.raises(Stopped) as stopped:
        with stop_on_signals():
            with fileio.atomic_path(target) as tmp:
                tmp.write_bytes(b"first half ")
                os.kill(os.getpid(), signal.SIGTERM)  # handled now, acted on after the write
                tmp.write_bytes(b"first half, second half")
    assert stopped.value.exit_code == 143 and target.read_bytes() == b"first half, second half"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is restored


def test_a_long_legal_file_name_gets_a_temporary_name_that_fits(tmp_path):
    target = tmp_path / ("f" * 245 + ".npy")
    fileio.atomic_write_text(target, "x")
    assert target.read_text() == "x"


def test_extract_removes_the_temporaries_a_killed_extraction_left(tmp_path):
    from tiny_reid_data import save_tiny_checkpoint

    weights, _, _ = save_tiny_checkpoint(tmp_path / "best.pt")
    images = write_two_domains(tmp_path / "data") / "DukeMTMC-reID" / "query"
    out = tmp_path / "features.npy"
    stale = [tmp_path / ".features.npy.k3j2l1.tmp", tmp_path / ".features.npy.index.tsv.a8x9.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    (tmp_path / ".other.npy.zz.tmp").write_bytes(b"another file's")
    result = CliRunner().invoke(cli, ["extract", "--weights", str(weights), "--images", str(images), "--out", str(out),
                                      "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    assert not any(path.exists() for path in stale) and (tmp_path / ".other.npy.zz.tmp").exists()


def _udareid(*args: str, cwd: Path) -> subprocess.Popen:
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "uda_reid", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=environment)


def _wait_for(condition, process: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert process.poll() is None, process.communicate()[0]
        assert time.time() < deadline, "the run did not get there in time"
        time.sleep(0.05)


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stopped_run_says_where_it_stands_and_continues_with_resume(tmp_path, data_root, signum, code):
    out = tmp_path / "run"
    args = train_args(data_root, out, epochs=30)
    process = _udareid(*args, cwd=tmp_path)
    _wait_for(lambda: (out / "last.pt").exists(), process)
    process.send_signal(signum)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == code, output
    name = signal.Signals(signum).name
    assert f"stopped by {name} in training epoch" in output and f"--resume --out {out}" in output, output
    assert "Traceback" not in output and "Aborted" not in output
    assert not list(out.rglob(".*.tmp")) and not (out / LOCK_NAME).exists()
    done = [row["epoch"] for row in metrics_rows(out)]
    resumed = CliRunner().invoke(cli, [*train_args(data_root, out, epochs=max(done) + 1), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert [row["epoch"] for row in metrics_rows(out)] == list(range(0 if done[0] == 0 else 1, max(done) + 2))


def test_a_run_stopped_before_its_first_checkpoint_removes_its_folder(tmp_path, data_root):
    out = tmp_path / "run"
    process = _udareid(*train_args(data_root, out, "--set", "train.iters_per_epoch=100000"), cwd=tmp_path)
    _wait_for(lambda: (out / "config.yaml").exists(), process)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 143 and "before the run's first checkpoint: nothing to resume" in output, output
    assert not out.exists()
