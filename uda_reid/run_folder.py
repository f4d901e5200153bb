"""The run folder belongs to the user: what uda_reid may write there, and what it leaves behind.

- A new run goes into a folder that is missing or empty; a folder holding other files is refused
  unless the user says ``--overwrite`` (their ``best.pt`` or ``metrics.png`` would be replaced), and
  one holding a run (``config.yaml`` / ``last.pt``) is continued with ``--resume`` or left alone.
- One process at a time: :func:`run_lock` holds ``.udareid.lock`` (pid and host) for the run's life;
  a second process is refused at once, and a lock left by a killed process is taken over.
- A run that stops before its first checkpoint (a bad ``--init``, an empty dataset, Ctrl-C in the
  first epoch) removes what it created, so the same command can simply be run again; files that
  were there before are never touched.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator

from .errors import ConfigError
from .fileio import TEMPORARY_SUFFIX

LOCK_NAME = ".udareid.lock"
#: The files whose presence says "a run started here".
RUN_MARKERS = ("config.yaml", "last.pt")


def _own_bookkeeping(entry: Path) -> bool:
    """The lock and hidden temporaries of an atomic write: uda_reid's, never the user's."""
    return entry.name == LOCK_NAME or (entry.name.startswith(".") and entry.name.endswith(TEMPORARY_SUFFIX))


def holds_a_run(out: Path) -> bool:
    return any((out / name).exists() for name in RUN_MARKERS)


def check_run_folder(out: Path, *, resume: bool, overwrite: bool = False) -> None:
    """Refuse, in one line, a folder this run must not write into (see the module's rules)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; expected a folder for the run (missing or empty)")
    started = holds_a_run(out)
    if resume:
        if not started:
            raise ConfigError(f"--resume: {out} holds no run to resume (no config.yaml or last.pt)")
        return
    if started:
        raise ConfigError(f"--out {out} already holds a run; pass --resume to continue it or choose another --out")
    foreign = sorted(entry.name for entry in out.iterdir() if not _own_bookkeeping(entry)) if out.is_dir() else []
    if foreign and not overwrite:
        shown = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4 else "")
        raise ConfigError(f"--out {out} holds files uda_reid did not write ({shown}); choose an empty or new --out, "
                          f"or pass --overwrite to let the run replace files of the same names")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as error:
        return error.errno == errno.EPERM  # alive, another user's
    return True


@contextmanager
def run_lock(out: Path) -> Iterator[str | None]:
    """Hold ``out/.udareid.lock`` while the block runs; yields a note when a stale lock was taken over.

    The lock names the holder's pid and host. Another live process on this host is refused at once;
    a lock whose process is gone (kill -9, a crashed machine's reboot) is stale and replaced. A lock
    from another host cannot be checked, so it is refused with the way out (delete the file).
    """
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    host, me = socket.gethostname(), os.getpid()
    note = None
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_lock(path)
            if holder is None:  # empty or torn: its writer died between create and write
                path.unlink(missing_ok=True)
                continue
            pid, holder_host = holder
            if holder_host == host and not _process_alive(pid):
                path.unlink(missing_ok=True)
                note = f"{path}: the process that held it (pid {pid}) is gone; lock taken over"
                continue
            where = f"process {pid}" + ("" if holder_host == host else f" on {holder_host}")
            raise ConfigError(f"--out {out} is in use by another udareid run ({where}, {path}); wait for it to end, "
                              f"or delete {path.name} if that process no longer exists") from None
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{me} {host}\n")
        break
    else:  # pragma: no cover - two stale takeovers in a row means another process is racing us
        raise ConfigError(f"--out {out}: could not take {path.name}; is another udareid run starting there?")
    try:
        yield note
    finally:
        if _read_lock(path) == (me, host):
            path.unlink(missing_ok=True)


def _read_lock(path: Path) -> tuple[int, str] | None:
    try:
        pid, host = path.read_text().split()
        return int(pid), host
    except (OSError, ValueError):
        return None


def has_checkpoint(out: Path) -> bool:
    """Whether the run wrote a ``last.pt`` (its own or its source stage's): then it can be resumed."""
    return out.is_dir() and any(path.is_file() for path in out.rglob("last.pt"))


@contextmanager
def removed_if_stopped_before_a_checkpoint(out: Path) -> Iterator[None]:
    """On any failure before the run's first ``last.pt``, remove what the run created in ``out``;
    what was there before stays as it was (the caller removes the folder if it made it:
    :func:`remove_if_empty`, once the lock inside is gone)."""
    before = {entry.name for entry in out.iterdir()} if out.is_dir() else set()
    try:
        yield
    except BaseException:
        if not has_checkpoint(out) and out.is_dir():
            for entry in out.iterdir():
                if entry.name in before:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        raise


def remove_if_empty(folder: Path) -> None:
    with suppress(OSError):  # not empty, or already gone: left as it is
        folder.rmdir()
