"""Per-epoch pseudo-labels and per-image scores of a run: ``epochs/epoch_NNN.npz`` and ``<score>.png``.

Users look at what the clustering decided (which images were outliers, which cluster each image
joined) and at per-image scores a method computes (PPLR's cross-agreement); ``udareid
inspect-agreement`` reads these files back. Each file is written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..fileio import atomic_path, pyplot, save_figure

# Coarse on purpose: scores such as PPLR's agreement (|A∩B| / |A∪B| of 20-NN lists) take few distinct
# values, and finer bins show their gaps instead of the distribution.
BINS = 10


def epoch_record_path(run_dir: str | Path, epoch: int) -> Path:
    """``run_dir/epochs/epoch_NNN.npz`` for ``epoch`` counted from 1."""
    return Path(run_dir) / "epochs" / f"epoch_{epoch:03d}.npz"


def save_epoch_record(run_dir: str | Path, epoch: int, *, cluster_labels: np.ndarray, training_labels: np.ndarray,
                      scores: dict[str, np.ndarray]) -> Path:
    """Labels of the clustering (−1 = outlier), the labels trained with, and the method's scores."""
    path = epoch_record_path(run_dir, epoch)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, cluster_labels=cluster_labels, training_labels=training_labels,
                 **{f"score_{name}": np.asarray(values) for name, values in scores.items()})
    return path


def load_epoch_records(run_dir: str | Path) -> dict[int, dict[str, np.ndarray]]:
    """Every saved epoch: ``{epoch: {"cluster_labels", "training_labels", "score_<name>"...}}``."""
    records = {}
    for path in sorted((Path(run_dir) / "epochs").glob("epoch_*.npz")):
        with np.load(path) as data:
            records[int(path.stem.split("_")[1])] = {key: data[key] for key in data.files}
    return records


def plot_score_distributions(run_dir: str | Path) -> list[Path]:
    """One ``<score>.png`` per score: its histogram at every epoch (one panel per column, e.g. part)."""
    plt = pyplot()

    records = load_epoch_records(run_dir)
    names = sorted({key for record in records.values() for key in record if key.startswith("score_")})
    written = []
    for key in names:
        epochs = [(epoch, record[key]) for epoch, record in records.items() if key in record]
        columns = 1 if epochs[0][1].ndim == 1 else epochs[0][1].shape[1]
        fig, axes = plt.subplots(1, columns, figsize=(4 * columns, 3.2), squeeze=False)
        colours = plt.cm.viridis(np.linspace(0, 1, len(epochs)))
        low = min(float(values.min()) for _, values in epochs)
        high = max(float(values.max()) for _, values in epochs)
        edges = np.linspace(low, high if high > low else low + 1, BINS + 1)
        for column, ax in enumerate(axes[0]):
            for colour, (epoch, values) in zip(colours, epochs):
                data = values if values.ndim == 1 else values[:, column]
                counts, _ = np.histogram(data, edges)
                ax.plot((edges[:-1] + edges[1:]) / 2, counts, color=colour, label=f"epoch {epoch} (mean {data.mean():.2f})")
            ax.set_title(key.removeprefix("score_") + (f", column {column + 1} of {columns}" if columns > 1 else ""), fontsize=9)
            ax.set_xlabel("score")
            ax.set_ylabel("images")
        axes[0][-1].legend(fontsize=6)
        written.append(save_figure(fig, Path(run_dir) / f"{key.removeprefix('score_')}.png"))
    return written
