"""Ctrl-C (SIGINT) and ``kill`` (SIGTERM) end a command cleanly: the file being written is finished,
temporaries are removed, the user is told where the run stands and how to continue, and the exit
code is the shell's convention (128 + signal: 130, 143).

Without this, SIGTERM ended the process with no word and left hidden temporaries behind, and
Ctrl-C printed click's bare "Aborted!" with exit code 1.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

from . import fileio

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
    """Raised in the main thread by SIGINT or SIGTERM (a KeyboardInterrupt, so code that cleans up
    after Ctrl-C does so for both). ``message``: what the command that was stopped has to say."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.message: str | None = None
        self.where = ""  # " in STAGE epoch N of M", filled in by the training loop that was stopped

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


def _handler(signum: int, frame) -> None:
    stop = Stopped(signum)
    if fileio.writing():  # finish the checkpoint / log being written first
        fileio.stop_after_writes(stop)
        return
    raise stop


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Stopped` while the block runs (main thread only: signal
    handlers can only be set there; elsewhere the block runs unchanged). The previous handlers are
    restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    for signum in STOP_SIGNALS:
        signal.signal(signum, _handler)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
