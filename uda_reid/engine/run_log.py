"""Per-epoch figures of a run: ``metrics.jsonl`` (machine-readable), ``metrics.png``, ``log.txt`` and
TensorBoard event files in ``tensorboard/`` (what torchreid and fast-reid users open first).

Each write replaces the whole file atomically, so a killed run never leaves a torn line, and a
resumed run can drop the rows it is about to redo (TensorBoard's own ``purge_step`` drops them from the
event files). metrics.jsonl is the record; the event files are a view of it. In a run of several processes only rank 0's
log writes (``writes=False`` elsewhere): the others keep their rows in memory and stay silent.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..clustering.diagnostics import SIZE_BINS, size_bin_name
from ..fileio import atomic_write_text, pyplot, save_figure

# Which curves share a panel (and, shortened, a TensorBoard group): retrieval figures, losses,
# clustering counts, GDS's global statistics, cluster sizes, label-free clustering figures.
_PANELS = {
    "retrieval (%)": ("mAP", "rank1", "rank5", "rank10"),
    "loss": ("loss",),
    "clusters": ("clusters", "outliers", "unclustered"),
    "GDS pair distances: means, stds, 3σ tails": ("gds_",),
    "cluster sizes (clusters of each size)": ("clusters_of_", *(size_bin_name(*bin_) for bin_ in SIZE_BINS)),
    "label-free: ARI/NMI vs previous epoch, cosine distances, outlier share": (
        "ari_previous", "nmi_previous", "intra_distance", "inter_distance", "outlier_share"),
}
_GROUPS = dict(zip(_PANELS, ("retrieval", "loss", "clusters", "gds", "cluster_sizes", "label_free")))


def panel_of(key: str) -> str | None:
    """The panel ``key`` is drawn in: the one whose prefix matches it longest (clusters_of_2: sizes)."""
    matches = [(len(p), title) for title, prefixes in _PANELS.items() for p in prefixes if key.startswith(p)]
    return max(matches)[1] if matches else None


def tensorboard_tag(key: str) -> str:
    """``mAP`` -> ``retrieval/mAP``; keys of no panel (lr, epoch_seconds) -> ``run/lr``."""
    panel = panel_of(key)
    return f"{_GROUPS[panel] if panel else 'run'}/{key}"


class RunLog:
    """Rows of figures, one per evaluation point or epoch, kept in ``run_dir``.

    ``writes=False`` (ranks other than 0): rows are kept in memory only, nothing is written or logged.
    ``tensorboard``: also write each row's numbers (step = epoch) and the images given to :meth:`image`.
    """

    def __init__(self, run_dir: str | Path, *, resume: bool = False, writes: bool = True, screen: str | None = None,
                 epochs: int | None = None, title: str = "", tensorboard: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.title = title  # of metrics.png: the run, its method and datasets
        self.writes = writes
        self.screen = screen  # the stage name to print each row's line under (None: nothing on screen)
        self.epochs = epochs
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.plot_path = self.run_dir / "metrics.png"
        self.rows: list[dict[str, Any]] = []
        if resume and self.metrics_path.exists():
            self.rows = [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line]
        self.logger: logging.Logger | None = None
        if writes:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.logger = _file_logger(self.run_dir / "log.txt")
        self.tensorboard_dir = self.run_dir / "tensorboard"
        self._writer = None
        self._tensorboard = tensorboard and writes
        self._purge_step: int | None = None

    def _tensorboard_writer(self):
        """The event writer, opened at the first figure (a run refused before its first epoch writes
        no event file), dropping the redone epochs' events when the run was resumed."""
        if not self._tensorboard:
            return None
        if self._writer is None:
            from torch.utils.tensorboard import (
                SummaryWriter,  # a dependency; imported only when used
            )

            self._writer = SummaryWriter(log_dir=str(self.tensorboard_dir), purge_step=self._purge_step)
        return self._writer

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self.screen is not None:  # a line that stays on screen, between the progress bars
            tqdm.write(screen_line(self.screen, row, self.epochs), file=sys.stderr)
        if not self.writes:
            return
        lines = "".join(json.dumps(r, sort_keys=False) + "\n" for r in self.rows)
        atomic_write_text(self.metrics_path, lines)
        self.info(" ".join(f"{k}={_short(v)}" for k, v in row.items()))
        self.plot()
        writer = self._tensorboard_writer()
        if writer is not None and "epoch" in row:
            for key, value in row.items():
                if key != "epoch" and _is_number(value):
                    writer.add_scalar(tensorboard_tag(key), value, global_step=row["epoch"])
            writer.flush()

    def image(self, tag: str, png: str | Path, epoch: int) -> None:
        """Show a picture the run wrote (the cluster grid) in TensorBoard at ``epoch``."""
        writer = self._tensorboard_writer()
        if writer is None:
            return
        import numpy as np
        from PIL import Image

        with Image.open(png) as picture:
            pixels = np.asarray(picture.convert("RGB"))
        writer.add_image(tag, pixels, global_step=epoch, dataformats="HWC")
        writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def truncate_after(self, epoch: int) -> None:
        """Forget rows of epochs after ``epoch`` (a resumed run redoes them)."""
        self.rows = [r for r in self.rows if r.get("epoch", -1) <= epoch]
        if self.writes:
            atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in self.rows))
        if self._tensorboard:  # events of the epochs redone are dropped when TensorBoard reads the folder
            self.close()
            self._purge_step = epoch + 1

    def info(self, message: str) -> None:
        if self.logger is not None:
            self.logger.info(message)

    def plot(self) -> None:
        numbers = {k for r in self.rows for k, v in r.items() if _is_number(v)}
        owner = {key: panel_of(key) for key in numbers if panel_of(key) is not None}
        panels = []
        for title, prefixes in _PANELS.items():
            present = {k for k, t in owner.items() if t == title}
            # the panel's own order first (mAP, rank1, rank5, rank10), then any other key by name
            keys = [k for k in prefixes if k in present] + sorted(present - set(prefixes))
            if keys:
                panels.append((title, keys))
        if not panels:
            return
        from matplotlib.ticker import MaxNLocator

        epochs = [r["epoch"] for r in self.rows if "epoch" in r]
        fig, axes = pyplot().subplots(1, len(panels), figsize=(5 * len(panels), 3.9), squeeze=False)
        for ax, (title, keys) in zip(axes[0], panels):
            series = {key: [(r["epoch"], r[key]) for r in self.rows if _is_number(r.get(key)) and "epoch" in r]
                      for key in keys}
            for key in keys:
                if not series[key]:
                    continue
                if key == "unclustered" and series[key] == series.get("outliers"):
                    continue  # the same numbers: drawn once, as "outliers (= unclustered)"
                label = key
                if key == "outliers" and series[key] == series.get("unclustered"):
                    label = "outliers (= unclustered)"
                xs, ys = zip(*series[key])
                ax.plot(xs, ys, marker="o", markersize=3, label=label,
                        linestyle="--" if key == "unclustered" else "-")
            if title == "clusters":  # counts of very different sizes (clusters vs outliers): log scale
                ax.set_yscale("symlog", linthresh=10)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("epoch")
            if epochs:  # whole epochs, with room around a single one (not an axis of 0.95-1.05)
                ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        if self.title:
            fig.suptitle(self.title, fontsize=10)
        save_figure(fig, self.plot_path)


def screen_line(stage: str, row: dict[str, Any], epochs: int | None = None) -> str:
    """One line per row for the screen: ``adaptation epoch 3/10  clusters 95 (639 outliers)  loss 5.84  mAP 22.8  R1 31.0``."""
    epoch = row.get("epoch", 0)
    head = f"{stage}: initial model" if epoch == 0 else f"{stage} epoch {epoch}" + (f"/{epochs}" if epochs else "")
    parts = [head]
    if "clusters" in row:
        parts.append(f"clusters {row['clusters']} ({row.get('outliers', 0)} outliers)")
    if "loss" in row:
        parts.append(f"loss {row['loss']:.3f}")
    if "mAP" in row:
        parts.append(f"mAP {row['mAP']:.1f}  R1 {row.get('rank1', float('nan')):.1f}")
    if "epoch_seconds" in row:
        parts.append(f"({row['epoch_seconds']:.0f} s)")
    return "  ".join(parts)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _file_logger(path: Path) -> logging.Logger:
    logger = logging.getLogger(f"uda_reid.run.{path.parent.resolve()}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path.resolve() for h in logger.handlers):
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        logger.addHandler(handler)
    return logger
