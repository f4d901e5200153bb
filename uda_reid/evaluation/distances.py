"""Histograms of positive vs negative pair distances: the picture GDS explains itself with.

Distances are Euclidean between L2-normalised features (what GDS trains on), so they lie in [0, 2].
Pairs are counted in row blocks, so a 30,000-image split never holds an N×N matrix. On the train
split a pair is positive when the ground-truth identities agree (pairs with an unknown id, −1, are
left out); on the test split the pairs are query × gallery as the retrieval protocol sees them
(junk gallery images and same-identity same-camera pairs are left out).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..config import DataConfig
from ..data.datasets import ReidDataset
from ..models.features import extract_features
from ..fileio import atomic_write_text, pyplot, save_figure

BINS = 100
RANGE = (0.0, 2.0)


@dataclass
class PairHistogram:
    """Counts of positive and negative pair distances over ``BINS`` equal bins of [0, 2]."""

    positive: np.ndarray
    negative: np.ndarray

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(*RANGE, BINS + 1)

    def summary(self) -> dict[str, float]:
        """Count, mean and standard deviation of each kind (from the bin centres)."""
        centres = (self.edges[:-1] + self.edges[1:]) / 2
        figures: dict[str, float] = {}
        for name, counts in (("pos", self.positive), ("neg", self.negative)):
            total = counts.sum()
            mean = float((counts * centres).sum() / total) if total else float("nan")
            var = float((counts * (centres - mean) ** 2).sum() / total) if total else float("nan")
            figures.update({f"{name}_pairs": int(total), f"{name}_mean": round(mean, 4), f"{name}_std": round(var**0.5, 4)})
        return figures


def _histogram(values: torch.Tensor) -> np.ndarray:
    return torch.histc(values.double(), bins=BINS, min=RANGE[0], max=RANGE[1]).numpy().astype(np.int64)


def pair_histogram(
    rows: torch.Tensor,
    row_ids: np.ndarray,
    columns: torch.Tensor | None = None,
    column_ids: np.ndarray | None = None,
    *,
    row_cameras: np.ndarray | None = None,
    column_cameras: np.ndarray | None = None,
    block: int = 2048,
) -> PairHistogram:
    """Histogram of the distances between ``rows`` and ``columns`` (``columns=None``: pairs i < j of ``rows``).

    ``row_ids`` / ``column_ids``: identity per sample, −1 = unknown (its pairs are skipped).
    With ``row_cameras`` and ``column_cameras``, same-identity pairs from one camera are skipped (the
    retrieval protocol ignores them).
    """
    rows = F.normalize(rows.float(), dim=1)
    within = columns is None
    columns = rows if within else F.normalize(columns.float(), dim=1)
    column_ids = row_ids if column_ids is None else column_ids
    col_ids = torch.as_tensor(column_ids)
    positive = np.zeros(BINS, dtype=np.int64)
    negative = np.zeros(BINS, dtype=np.int64)
    for start in range(0, len(rows), block):
        stop = min(start + block, len(rows))
        dist = (2.0 - 2.0 * rows[start:stop] @ columns.t()).clamp_min(0).sqrt()
        ids = torch.as_tensor(row_ids[start:stop])
        valid = (ids[:, None] >= 0) & (col_ids[None, :] >= 0)
        if within:
            valid &= torch.arange(start, stop)[:, None] < torch.arange(len(columns))[None, :]
        same = ids[:, None] == col_ids[None, :]
        if row_cameras is not None and column_cameras is not None:
            same_camera = torch.as_tensor(row_cameras[start:stop])[:, None] == torch.as_tensor(column_cameras)[None, :]
            valid &= ~(same & same_camera)
        positive += _histogram(dist[valid & same])
        negative += _histogram(dist[valid & ~same])
    return PairHistogram(positive, negative)


def dataset_histograms(model: torch.nn.Module, dataset: ReidDataset, data_config: DataConfig, *, device=None,
                       progress: bool = False) -> dict[str, PairHistogram]:
    """Histograms of the target ``train`` split (ground-truth ids) and the ``test`` query × gallery pairs."""
    histograms: dict[str, PairHistogram] = {}
    train_ids = np.array([s.pid for s in dataset.train])
    if len(train_ids) and (train_ids >= 0).any():
        features = extract_features(model, dataset.train, data_config, device=device, progress=progress, desc="train features")
        histograms["train"] = pair_histogram(features, train_ids)
    if dataset.query and dataset.gallery:
        samples = list(dataset.query) + list(dataset.gallery)
        features = extract_features(model, samples, data_config, device=device, progress=progress, desc="test features")
        query_ids = np.array([s.pid for s in dataset.query])
        gallery_ids = np.array([s.pid for s in dataset.gallery])
        histograms["test"] = pair_histogram(
            features[: len(query_ids)], query_ids, features[len(query_ids):], gallery_ids,
            row_cameras=np.array([s.camid for s in dataset.query]),
            column_cameras=np.array([s.camid for s in dataset.gallery]),
        )
    return histograms


def save_histograms(histograms: dict[str, PairHistogram], out_dir: str | Path, *, title: str = "") -> tuple[Path, Path]:
    """``distances.json`` (edges, counts, summaries) and ``distances.png`` (one panel per split), atomically."""
    plt = pyplot()

    out_dir = Path(out_dir)
    record: dict[str, Any] = {"edges": np.linspace(*RANGE, BINS + 1).round(4).tolist()}
    for split, histogram in histograms.items():
        record[split] = {
            "positive": histogram.positive.tolist(),
            "negative": histogram.negative.tolist(),
            **histogram.summary(),
        }
    json_path = out_dir / "distances.json"
    atomic_write_text(json_path, json.dumps(record) + "\n")

    fig, axes = plt.subplots(1, max(1, len(histograms)), figsize=(5.5 * max(1, len(histograms)), 3.6), squeeze=False)
    for ax, (split, histogram) in zip(axes[0], histograms.items()):
        centres = (histogram.edges[:-1] + histogram.edges[1:]) / 2
        width = histogram.edges[1] - histogram.edges[0]
        for counts, label, colour in ((histogram.positive, "positive pairs", "tab:green"),
                                      (histogram.negative, "negative pairs", "tab:red")):
            total = counts.sum()
            if total:  # densities, so 10^3 positives and 10^6 negatives share an axis
                ax.bar(centres, counts / (total * width), width=width, alpha=0.5, color=colour, label=label)
        summary = histogram.summary()
        ax.set_title(f"{split}: μ+ {summary['pos_mean']:.2f} σ+ {summary['pos_std']:.2f} | "
                     f"μ− {summary['neg_mean']:.2f} σ− {summary['neg_std']:.2f}", fontsize=8)
        ax.set_xlabel("distance (L2-normalised features)")
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return json_path, save_figure(fig, out_dir / "distances.png")
