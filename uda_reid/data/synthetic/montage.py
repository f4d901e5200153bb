"""A contact sheet of a generated (or any Market-style) folder: one row per identity.

Rows show one person across cameras, so a glance tells whether identities are recognisable and
how much the cameras and the domain change their look.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections import defaultdict
from pathlib import Path

from PIL import Image, ImageDraw

from ...errors import DatasetLayoutError

_NAME = re.compile(r"^(\d+)_c(\d+)")  # person id, camera (junk "-1" and distractors "0000" are skipped)
_GAP = 2


def _image_folder(folder: Path, split: str) -> Path:
    if (folder / split).is_dir():
        return folder / split
    if any(folder.glob("*.jpg")):
        return folder
    raise DatasetLayoutError(f"{folder} has neither a {split}/ folder nor .jpg files to put in a montage")


def save_montage(
    folder: Path | str,
    out_png: Path | str,
    n: int = 8,
    *,
    images_per_row: int = 10,
    split: str = "bounding_box_train",
    zoom: int = 1,
) -> Path:
    """Save a PNG grid of `n` identities (rows, spread over the id range) x `images_per_row` images.

    `folder` is a domain folder (its `split` is used) or a folder of Market-named .jpg files.
    Within a row, images are taken round-robin over cameras so each camera appears.
    """
    folder, out_png = Path(folder), Path(out_png)
    source = _image_folder(folder, split)
    by_person: dict[int, dict[int, list[Path]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(source.glob("*.jpg")):
        match = _NAME.match(path.name)
        if match and int(match.group(1)) > 0:
            by_person[int(match.group(1))][int(match.group(2))].append(path)
    if not by_person:
        raise DatasetLayoutError(f"{source} has no images named like 0001_c1s1_000001_00.jpg")
    people = sorted(by_person)
    chosen = [people[round(i * (len(people) - 1) / max(1, n - 1))] for i in range(min(n, len(people)))]
    rows: list[list[Path]] = []
    for person in chosen:
        per_camera = [by_person[person][cam] for cam in sorted(by_person[person])]
        row: list[Path] = []
        for depth in range(max(len(images) for images in per_camera)):
            row.extend(images[depth] for images in per_camera if depth < len(images))
        rows.append(row[:images_per_row])
    with Image.open(rows[0][0]) as first:
        cell_w, cell_h = first.width * zoom, first.height * zoom
    label_h = 14
    columns = max(len(row) for row in rows)
    sheet = Image.new(
        "RGB",
        (columns * (cell_w + _GAP) + _GAP, label_h + len(rows) * (cell_h + _GAP) + _GAP),
        (255, 255, 255),
    )
    ImageDraw.Draw(sheet).text(
        (_GAP, 1), f"{folder.name}/{source.name}: one identity per row", fill=(0, 0, 0)
    )
    for r, row in enumerate(rows):
        for c, path in enumerate(row):
            with Image.open(path) as image:
                cell = image.convert("RGB").resize((cell_w, cell_h), Image.Resampling.NEAREST)
            sheet.paste(cell, (_GAP + c * (cell_w + _GAP), label_h + _GAP + r * (cell_h + _GAP)))
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{out_png.name}.", suffix=".png", dir=out_png.parent)
    os.close(fd)
    try:
        sheet.save(temporary, format="PNG")
        os.replace(temporary, out_png)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return out_png
