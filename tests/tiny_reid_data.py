"""Tiny two-domain re-ID data in the real Market-1501 / DukeMTMC-reID layouts, written in milliseconds.

Each identity is a two-colour block person (upper / lower colour) with pixel noise; the second
domain adds a colour offset, so a model trained on one sees a shifted distribution on the other.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def _write_domain(root: Path, rng: np.random.Generator, offset: int, train_ids: int, test_ids: int, per_id: int) -> None:
    splits = (
        ("bounding_box_train", range(1, train_ids + 1)),
        ("query", range(100, 100 + test_ids)),
        ("bounding_box_test", range(100, 100 + test_ids)),
    )
    colours = {pid: rng.integers(0, 256, (2, 3)) for pid in range(1, 100 + test_ids)}
    for split, ids in splits:
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        for pid in ids:
            count = 1 if split == "query" else per_id
            for k in range(count):
                camera = 1 if split == "query" else (k % 3) + 1 + (split == "bounding_box_test")
                image = np.empty((32, 16, 3))
                image[:16] = colours[pid][0]
                image[16:] = colours[pid][1]
                image = np.clip(image + offset + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
                Image.fromarray(image).save(folder / f"{pid:04d}_c{camera}s1_{k:06d}_00.jpg")


def write_two_domains(data_root: Path, *, train_ids: int = 12, test_ids: int = 8, per_id: int = 6) -> Path:
    """`Market-1501-v15.09.15/` (source) and `DukeMTMC-reID/` (target, colour-shifted) under data_root."""
    rng = np.random.default_rng(0)
    _write_domain(data_root / "Market-1501-v15.09.15", rng, 0, train_ids, test_ids, per_id)
    _write_domain(data_root / "DukeMTMC-reID", rng, 40, train_ids, test_ids, per_id)
    return data_root
