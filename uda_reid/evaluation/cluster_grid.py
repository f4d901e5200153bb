"""Do the clusters show people? A grid of sampled clusters, one row each, its member images.

Without labels this is the check a person can make by eye (``clusters_epochNNN.png`` of a run on a
folder of unlabeled images): a row of one person under several cameras is a good cluster, a row of
several people (same clothes colour, same background) says eps is too loose.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..data.image_dataset import read_image
from ..data.layouts import Sample
from ..fileio import pyplot, save_figure


def sampled_clusters(labels: np.ndarray, rows: int, columns: int, seed: int) -> list[tuple[int, np.ndarray]]:
    """Up to ``rows`` clusters drawn at random (``seed``), each with up to ``columns`` of its members
    (drawn too), largest clusters first in the grid: (cluster label, member indices)."""
    labels = np.asarray(labels)
    present = np.unique(labels[labels >= 0])
    rng = np.random.default_rng(seed)
    chosen = rng.choice(present, size=min(rows, len(present)), replace=False) if len(present) else present
    picked = []
    for label in chosen:
        members = np.nonzero(labels == label)[0]
        shown = np.sort(rng.choice(members, size=min(columns, len(members)), replace=False))
        picked.append((int(label), shown, len(members)))
    picked.sort(key=lambda item: (-item[2], item[0]))
    return [(label, shown) for label, shown, _ in picked]


def save_cluster_grid(samples: Sequence[Sample], labels: np.ndarray, out_png: str | Path, *, rows: int = 8,
                      columns: int = 10, seed: int = 0, title: str = "") -> Path | None:
    """Write the grid; returns its path, or None when there is no cluster to show. Each row is
    titled with the cluster's label, size and cameras (when the images have camera ids)."""
    plt = pyplot()

    clusters = sampled_clusters(labels, rows, columns, seed)
    if not clusters:
        return None
    width = max(len(shown) for _, shown in clusters)
    fig, axes = plt.subplots(len(clusters), width, figsize=(0.75 * width + 1.4, 1.45 * len(clusters) + 0.4),
                             squeeze=False)
    for row, (label, shown) in enumerate(clusters):
        size = int((np.asarray(labels) == label).sum())
        cameras = len({samples[i].camid for i in np.nonzero(np.asarray(labels) == label)[0]})
        for column in range(width):
            ax = axes[row][column]
            ax.axis("off")
            if column < len(shown):
                ax.imshow(read_image(samples[int(shown[column])].path))
        axes[row][0].text(-0.1, 0.5, f"cluster {label}\n{size} images\n{cameras} camera(s)", transform=axes[row][0].transAxes,
                          va="center", ha="right", fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, out_png, dpi=100)
