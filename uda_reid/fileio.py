"""Atomic file writes: a crash or kill mid-write never leaves a half-written checkpoint or log.

Each writer writes a temporary file in the destination folder and renames it over the target
(``os.replace`` is atomic on one file system), so readers see the old file or the new one.
"""

from __future__ import annotations

import argparse
import glob
import os
import pickle
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from .errors import CheckpointError


TEMPORARY_SUFFIX = ".tmp"

# Atomic writes in progress in this process, and a stop (SIGINT / SIGTERM, see uda_reid.stopping)
# that arrived during one: it is raised when the last write has finished, not in the middle of it.
_writes_in_progress = 0
_stop_after_writes: BaseException | None = None


def writing() -> bool:
    """Whether an atomic write is in progress (a signal handler then defers its stop)."""
    return _writes_in_progress > 0


def stop_after_writes(stop: BaseException) -> None:
    """Raise ``stop`` as soon as the atomic writes in progress have finished."""
    global _stop_after_writes
    _stop_after_writes = stop


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``.

    The result gets the permissions of a file opened normally (0666 less the umask), not the 0600
    of the temporary file, so a group sharing the run folder can read it.
    """
    global _writes_in_progress, _stop_after_writes
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A short hidden name (at most ~60 characters, whatever the target's): a legal 250-character name
    # must not fail because its temporary would pass the file system's 255.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name[:40]}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    _writes_in_progress += 1
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
        _writes_in_progress -= 1
        if _writes_in_progress == 0 and _stop_after_writes is not None:
            stop, _stop_after_writes = _stop_after_writes, None
            raise stop


def remove_stale_temporaries(folder: str | os.PathLike, target: str | None = None) -> list[Path]:
    """Delete the hidden ``.NAME.*.tmp`` files a kill during an atomic write left in ``folder``
    (with ``target``: only those of that file name).

    Call it only where no other process is writing (a run's own folder at its start; a file that
    only this command writes).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = f".{glob.escape(target[:40])}.*{TEMPORARY_SUFFIX}" if target is not None else f".*{TEMPORARY_SUFFIX}"
    stale = [p for p in folder.glob(pattern) if p.is_file()]
    for path in stale:
        path.unlink()
    return stale


def atomic_write_text(path: str | os.PathLike, text: str, errors: str = "strict") -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", errors=errors)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def safe_torch_load(path: str | os.PathLike) -> Any:
    """The file's top-level object (torch or .safetensors), read without running any pickled code."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint file {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint path {path} is not a file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"{path} is not a readable .safetensors file: {error}") from error
    try:
        with torch.serialization.safe_globals(_metadata_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = re.search(r"GLOBAL ([\w.]+)", str(error))
        if refused is not None:
            raise CheckpointError(
                f"{path} contains pickled Python objects ({refused.group(1)}), and uda_reid refuses to run "
                "code from a checkpoint file. Re-save a plain state dict where the file was made, e.g. "
                "torch.save(model.state_dict(), path), or convert it to .safetensors"
            ) from None
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (corrupt or another format)") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError, AttributeError) as error:
        # What torch's unpickler raises on a file that is not a checkpoint at all (text, truncated):
        # KeyError / IndexError on a stray opcode, EOFError on an empty file.
        detail = str(error) if isinstance(error, (RuntimeError, OSError, ValueError)) and str(error) else (
            "empty file" if path.stat().st_size == 0 else f"{type(error).__name__} while unpickling")
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({detail}); expected a file written by "
                              f"torch.save or a .safetensors file") from None


def _metadata_globals() -> list[Any]:
    """Plain-data types research checkpoints store beside their weights, safe to rebuild.

    SpCL/MMT-style files keep ``best_mAP`` as a numpy scalar and many scripts save their
    ``argparse.Namespace``; constructing these runs no code from the file, so they are allowed in
    addition to torch's own weights-only set. Object arrays and every other class stay refused.
    """
    try:
        from numpy._core.multiarray import scalar as numpy_scalar  # numpy >= 2
    except ImportError:
        from numpy.core.multiarray import scalar as numpy_scalar  # numpy 1.x

    numeric_dtypes = {type(np.dtype(code)) for code in np.typecodes["All"] if code != "O"}
    return [
        # numpy 1.x wrote "numpy.core..." into pickles, numpy 2 writes "numpy._core...": accept both.
        (numpy_scalar, "numpy.core.multiarray.scalar"),
        (numpy_scalar, "numpy._core.multiarray.scalar"),
        np.dtype,
        argparse.Namespace,
        *sorted(numeric_dtypes, key=lambda dtype_class: dtype_class.__name__),
    ]


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend: figures are written, never shown (servers have no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 90) -> Path:
    """Lay out ``fig``, write it as PNG atomically and close it (open figures pile up over a long run)."""
    plt = pyplot()
    path = Path(path)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return path
