"""Search a gallery: each query's nearest gallery images, as JSON and pictures (``udareid search``).

The gallery may be of any size (a folder, or a memory-mapped ``.npy`` written by ``udareid extract``):
it is read a block of rows at a time and each query keeps its running top K, so memory follows
``Q × block``, never ``Q × G``.
"""

from __future__ import annotations

import json
import re
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..data.layouts import Sample
from ..fileio import atomic_write_text
from .ranked_list_picture import save_ranked_list

#: Distances held at a time (queries × gallery rows of a block): 32 M floats = 128 MB.
BLOCK_ENTRIES = 32 * 1024 * 1024


def nearest_gallery(
    query: np.ndarray | torch.Tensor,
    gallery: np.ndarray,
    top: int,
    *,
    skip_rows: np.ndarray | None = None,
    same_camera_ids: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
    block_rows: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's ``top`` nearest gallery rows: (Q×top row indices, Q×top distances), nearest first.

    The distance is the squared Euclidean distance of L2-normalised features (2 − 2·cosine), the one
    evaluation ranks by; equal distances keep gallery order. ``skip_rows[i]`` (−1 = none) is a gallery
    row left out of query ``i``'s list (the query's own image when it is also in the gallery).
    ``same_camera_ids`` = (query pids, query cameras, gallery pids, gallery cameras) leaves out, as the
    evaluation protocol does, gallery images of the query's identity taken by the query's camera. Where a
    query has fewer than ``top`` candidates, the missing places hold row −1 and distance ``inf``.
    """
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    query = torch.as_tensor(np.asarray(query, dtype=np.float32))
    num_queries, num_gallery = len(query), len(gallery)
    block_rows = block_rows or max(1, BLOCK_ENTRIES // max(1, num_queries))
    skip = None if skip_rows is None else torch.as_tensor(np.asarray(skip_rows, dtype=np.int64)).unsqueeze(1)
    if same_camera_ids is not None:
        q_pids, q_cams, g_pids, g_cams = (torch.as_tensor(np.asarray(a, dtype=np.int64)) for a in same_camera_ids)
    best_distances = torch.empty(num_queries, 0)
    best_rows = torch.empty(num_queries, 0, dtype=torch.long)
    for start in range(0, num_gallery, block_rows):
        block = torch.from_numpy(np.array(gallery[start : start + block_rows], dtype=np.float32))  # a copy: maps are read-only
        distances = (2.0 - 2.0 * query @ block.t()).clamp_min(0)
        rows = torch.arange(start, start + len(block)).expand(num_queries, -1)
        if skip is not None:
            distances = distances.masked_fill(rows == skip, float("inf"))
        if same_camera_ids is not None:
            junk = (q_pids[:, None] == g_pids[None, start : start + len(block)]) & \
                   (q_cams[:, None] == g_cams[None, start : start + len(block)])
            distances = distances.masked_fill(junk, float("inf"))
        # The kept rows precede the block's and both are in gallery order, so a stable sort keeps
        # equal distances in gallery order.
        distances = torch.cat([best_distances, distances], dim=1)
        rows = torch.cat([best_rows, rows], dim=1)
        order = torch.sort(distances, dim=1, stable=True).indices[:, :top]
        best_distances, best_rows = distances.gather(1, order), rows.gather(1, order)
    best_rows = best_rows.masked_fill(torch.isinf(best_distances), -1)
    if best_rows.shape[1] < top:  # a gallery smaller than top
        missing = top - best_rows.shape[1]
        best_rows = torch.cat([best_rows, torch.full((num_queries, missing), -1, dtype=torch.long)], dim=1)
        best_distances = torch.cat([best_distances, torch.full((num_queries, missing), float("inf"))], dim=1)
    return best_rows.numpy(), best_distances.numpy()


def own_image_rows(query: Sequence[Sample], gallery: Sequence[Sample]) -> np.ndarray:
    """For each query, the gallery row of the very same file (−1 when it is not in the gallery)."""
    rows = {os.path.abspath(sample.path): row for row, sample in enumerate(gallery)}
    return np.array([rows.get(os.path.abspath(sample.path), -1) for sample in query], dtype=np.int64)


def write_ranked_lists(
    query: Sequence[Sample],
    query_features: np.ndarray | torch.Tensor,
    gallery: Sequence[Sample],
    gallery_features: np.ndarray,
    top: int,
    out_dir: str | Path,
    *,
    progress: bool = True,
    about: dict | None = None,
) -> dict:
    """Rank the gallery for every query and write ``ranked_lists.json`` and one picture per query.

    A query's own file is left out of its list. When every query and gallery identity is known (a
    labelled dataset), gallery images of the query's identity from the query's camera are left out
    too, as the evaluation protocol (and torchreid's visrank) does, so the share of queries whose
    first match has their identity, included in the result, is the protocol's Rank-1. ``about``
    (weights, sources) heads the JSON. Returns the JSON's content.
    """
    out_dir = Path(out_dir)
    ids_known = all(s.pid >= 0 for s in query) and all(s.pid >= 0 for s in gallery)
    same_camera_ids = None
    if ids_known:
        same_camera_ids = (np.array([s.pid for s in query]), np.array([s.camid for s in query]),
                           np.array([s.pid for s in gallery]), np.array([s.camid for s in gallery]))
    rows, distances = nearest_gallery(query_features, gallery_features, top, skip_rows=own_image_rows(query, gallery),
                                      same_camera_ids=same_camera_ids)
    lists = []
    for number, (sample, kept_rows, kept_distances) in enumerate(
        tqdm(list(zip(query, rows, distances)), desc="ranked lists", disable=not progress, leave=False), start=1
    ):
        matches = [(gallery[row], float(d)) for row, d in zip(kept_rows, kept_distances) if row >= 0]
        # a picture name any file system and shell takes: no control characters, at most ~70 characters
        picture = f"{number:05d}_{re.sub(r'[^A-Za-z0-9._-]+', '_', Path(sample.path).stem)[:60]}.png"
        save_ranked_list(sample, [m for m, _ in matches], [d for _, d in matches], out_dir / picture)
        lists.append({
            "query": sample.path, "pid": sample.pid, "camid": sample.camid, "picture": picture,
            "matches": [{"rank": rank, "path": match.path, "distance": round(d, 6), "pid": match.pid,
                         "camid": match.camid, "same_id": match.pid == sample.pid if ids_known else None}
                        for rank, (match, d) in enumerate(matches, start=1)],
        })
    result = {
        **(about or {}),
        "top": top,
        "distance": "squared Euclidean distance of L2-normalised features (2 - 2 cosine), nearest first",
        "left_out": ("the query's own file; gallery images of the query's identity from the query's camera "
                     "(evaluation protocol)") if ids_known else "the query's own file",
        "num_queries": len(query), "num_gallery": len(gallery),
        "first_match_same_id": (sum(bool(entry["matches"]) and entry["matches"][0]["same_id"] for entry in lists)
                                / len(lists) if ids_known and lists else None),
        "ranked_lists": lists,
    }
    atomic_write_text(out_dir / "ranked_lists.json", json.dumps(result, indent=1) + "\n")
    return result
