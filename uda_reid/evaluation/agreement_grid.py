"""The images PPLR trusts least and most: a grid of the lowest- and highest-agreement target images.

PPLR's authors show that a low cross-agreement marks occlusion, background clutter and
misalignment; this grid lets users check that on their own cameras (``udareid inspect-agreement``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..data.image_dataset import read_image
from ..data.layouts import Sample
from ..errors import ConfigError
from ..fileio import pyplot, save_figure


def extreme_indices(scores: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the ``count`` lowest and the ``count`` highest scores (``N`` or ``N×P``, mean over P).

    Ties keep the sample order, so the grid is the same on every call.
    """
    per_image = scores if scores.ndim == 1 else scores.mean(axis=1)
    order = np.argsort(per_image, kind="stable")
    count = min(count, len(order) // 2) if len(order) > 1 else len(order)
    return order[:count], order[::-1][:count]


def save_agreement_grid(samples: Sequence[Sample], scores: np.ndarray, out_png: str | Path, *, count: int = 12,
                        title: str = "") -> Path:
    """Two rows of thumbnails, lowest agreement on top, highest below, each with its score and parts."""
    plt = pyplot()

    if len(samples) != len(scores):
        raise ConfigError(
            f"the agreement scores cover {len(scores)} images but the target train split has {len(samples)}; "
            f"was the dataset changed since the run?"
        )
    if count < 1:
        raise ConfigError(f"--count must be at least 1, got {count}")
    lowest, highest = extreme_indices(scores, count)
    columns = max(len(lowest), 1)
    fig, axes = plt.subplots(2, columns, figsize=(1.2 * columns + 0.6, 5.4), squeeze=False)
    for row, (name, indices) in enumerate((("lowest agreement", lowest), ("highest agreement", highest))):
        for column in range(columns):
            ax = axes[row][column]
            ax.axis("off")
            if column >= len(indices):
                continue
            index = int(indices[column])
            ax.imshow(read_image(samples[index].path))
            value = scores[index]
            label = f"{float(np.mean(value)):.2f}"
            if np.ndim(value) == 1:
                label += "\n" + " ".join(f"{v:.2f}" for v in value)
            ax.set_title(label, fontsize=6)
        axes[row][0].text(-0.15, 0.5, name, transform=axes[row][0].transAxes, rotation=90, va="center", ha="right", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, out_png, dpi=110)
