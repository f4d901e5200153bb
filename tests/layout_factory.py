"""Write tiny copies of real re-ID dataset layouts (real folder names, real file-name rules).

Images are real 8x4 files in the format their extension says, so anything that opens them works, but
the loaders under test only read names.
"""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from PIL import Image

_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP"}


@lru_cache(maxsize=None)
def tiny_image_bytes(suffix: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 8), (120, 80, 40)).save(buffer, format=_FORMATS[suffix.lower()])
    return buffer.getvalue()


def write_images(folder: Path, relative_paths: Iterable[str]) -> None:
    """Write one tiny image per relative path (sub-folders created); other suffixes get junk bytes."""
    for relative in relative_paths:
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        suffix = target.suffix.lower()
        target.write_bytes(tiny_image_bytes(suffix) if suffix in _FORMATS else b"not an image")


def write_market_style(
    dataset_folder: Path,
    train: Iterable[str],
    query: Iterable[str],
    gallery: Iterable[str],
    extra_files: Iterable[str] = ("Thumbs.db",),
) -> Path:
    """`bounding_box_train/`, `query/`, `bounding_box_test/` with the given file names.

    `extra_files` (non-images such as Windows' Thumbs.db, which the real Market zip contains) go
    into every split folder.
    """
    extras = list(extra_files)
    for folder_name, names in (("bounding_box_train", train), ("query", query), ("bounding_box_test", gallery)):
        write_images(dataset_folder / folder_name, [*names, *extras])
    return dataset_folder


def write_msmt_lists(
    dataset_folder: Path,
    lists: dict[str, list[tuple[str, int]]],
    train_folder: str = "train",
    test_folder: str = "test",
) -> Path:
    """MSMT17 list files (`<path relative to train/ or test/> <pid>` lines) and the images they name."""
    for list_name, entries in lists.items():
        image_folder = train_folder if list_name in ("list_train.txt", "list_val.txt") else test_folder
        write_images(dataset_folder / image_folder, [relative for relative, _ in entries])
        lines = "".join(f"{relative} {pid}\n" for relative, pid in entries)
        (dataset_folder / list_name).write_text(lines)
    return dataset_folder
