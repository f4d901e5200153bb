"""The ``udareid`` group: turns faults in the user's input into one ``Error:`` line, and ``main``."""

from __future__ import annotations

import errno
from typing import Any

import click

from ..errors import UdaReidError


class _Group(click.Group):
    """Turns faults in the user's input or environment into click's one-line ``Error: ...`` and exit
    code 1: UdaReidError (also when raised inside a DataLoader worker) and OSError (a read-only or
    full disk, a file where a folder should be). Programming errors keep their traceback. SIGINT and
    SIGTERM stop a command with a line saying where it stands (uda_reid.stopping)."""

    def invoke(self, ctx: click.Context) -> Any:
        from ..stopping import Stopped, stop_on_signals

        try:
            with stop_on_signals():
                return super().invoke(ctx)
        except Stopped as stop:  # Ctrl-C or kill: said in a line, with the shell's exit code (130, 143)
            click.echo(stop.message or f"stopped by {stop.name}; files are written whole or not at all, "
                                       f"so run the command again", err=True)
            ctx.exit(stop.exit_code)
        except UdaReidError as error:
            raise click.ClickException(user_message(error)) from None
        except OSError as error:
            raise click.ClickException(os_error_message(error)) from None


def user_message(error: Exception) -> str:
    """The error's own message; for one re-raised by a DataLoader worker ("Caught ImageReadError in
    DataLoader worker process 0. Original Traceback ..."), the original one line."""
    message = str(error)
    if "Original Traceback" not in message:
        return message
    last = [line for line in message.splitlines() if line.strip()][-1]
    kind, sep, text = last.partition(": ")
    return text if sep and kind.rsplit(".", 1)[-1] == type(error).__name__ else last


def os_error_message(error: OSError) -> str:
    """``PATH: reason`` of a failed file operation, with what to do about the usual causes."""
    where = error.filename if error.filename is not None else ""
    reason = error.strerror or str(error)
    hint = {
        errno.EROFS: "the file system is read-only; choose another --out / --data-root",
        errno.EACCES: "no permission to write there; choose another --out / --data-root",
        errno.ENOSPC: "the disk is full; free space or choose another --out",
        errno.ENOTDIR: "a file is in the way where a folder is needed",
        errno.EEXIST: "a file is in the way where a folder is needed",
    }.get(error.errno or 0)
    message = f"{where}: {reason}" if where else reason
    return f"{message} ({hint})" if hint else message


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="uda_reid")
def cli() -> None:
    """Unsupervised person re-identification: UDA and USL with a cluster -> adapt loop."""


def main(argv: list[str] | None = None) -> None:
    """The ``udareid`` console script (also ``python -m uda_reid`` and ``python -m uda_reid.cli``)."""
    cli.main(args=argv, prog_name="udareid")
