"""Batched feature extraction (no augmentation), with progress; sharded over processes when there are several."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..config import DataConfig
from ..errors import ConfigError
from ..fileio import atomic_path, atomic_write_text, remove_stale_temporaries
from ..device import loader_options
from ..data.datasets import Sample
from ..data.image_dataset import ImageDataset
from ..data.transforms import eval_pixels, pixel_finish

#: The columns of an ``.index.tsv``.
INDEX_HEADER = ("row", "path", "pid", "camid")

if TYPE_CHECKING:
    from ..distributed import DistributedContext


def eval_loader(samples: Sequence[Sample], data_config: DataConfig, device: torch.device) -> DataLoader:
    """Test-time transform, ``eval_batch_size`` batches, sample order kept. Batches hold uint8 pixels:
    finish them on the device with ``data.transforms.pixel_finish(data_config)``."""
    return DataLoader(
        ImageDataset(samples, eval_pixels(data_config)),
        batch_size=data_config.eval_batch_size,
        shuffle=False,
        **loader_options(data_config.workers, device),
    )


@torch.no_grad()
def extract_features(
    model: nn.Module,
    samples: Sequence[Sample],
    data_config: DataConfig,
    *,
    device: torch.device | None = None,
    progress: bool = True,
    desc: str = "extracting features",
    dist: DistributedContext | None = None,
) -> torch.Tensor:
    """N×D float32 features on the CPU, in the order of ``samples`` (model in eval mode).

    The model's eval output is used as is (``ReidModel`` returns L2-normalised neck features).
    The model's train/eval mode is restored afterwards. With ``dist`` of several processes, each
    extracts its contiguous share of ``samples`` and the shares are gathered in order, so every
    process returns all N rows (call it on every process, with the same model weights).
    """
    if dist is not None and dist.is_distributed:
        share = extract_features(model, list(samples)[dist.shard(len(samples))], data_config, device=device,
                                 progress=progress, desc=desc)
        return dist.gather_rows(share)
    chunks = list(iter_feature_chunks(model, samples, data_config, device=device, progress=progress, desc=desc))
    return torch.cat(chunks) if chunks else torch.empty(0, 0)


@torch.no_grad()
def iter_feature_chunks(
    model: nn.Module,
    samples: Sequence[Sample],
    data_config: DataConfig,
    *,
    device: torch.device | None = None,
    progress: bool = True,
    desc: str = "extracting features",
) -> Iterator[torch.Tensor]:
    """The features of ``samples`` one ``eval_batch_size`` batch at a time (float32, CPU), in order,
    so a caller can write them out without holding all N×D (model in eval mode, restored after)."""
    device = device or next(model.parameters()).device
    loader = eval_loader(samples, data_config, device)
    finish = pixel_finish(data_config)
    was_training = model.training
    model.eval()
    try:
        for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
            yield model(finish(batch["image"], device)).float().cpu()
    finally:
        model.train(was_training)


def write_features(
    model: nn.Module,
    samples: Sequence[Sample],
    data_config: DataConfig,
    out: str | Path,
    *,
    device: torch.device | None = None,
    progress: bool = True,
) -> Path:
    """L2-normalised features of ``samples`` to ``out``, with their paths, ids and cameras.

    ``.npy``: the N×D float32 matrix, written batch by batch into a memory-mapped file (memory stays
    one batch, whatever N), plus ``<out>.index.tsv`` (row, path, pid, camid; pid −1 = unknown);
    ``.npz``: one file with ``features``, ``paths``, ``pids``, ``camids`` (held in memory: small sets).
    Both are written atomically: an interrupted extraction leaves no partial file under ``out``.
    """
    out = Path(out)
    if out.suffix not in (".npy", ".npz"):
        raise ConfigError(f"--out {out}: expected a .npy file (features, plus {out.name}.index.tsv) or a .npz file")
    if not samples:
        raise ConfigError("no images to extract features from")
    for name in (out.name, out.name + ".index.tsv"):  # left by an earlier extraction killed mid-write
        remove_stale_temporaries(out.parent, name)
    chunks = iter_feature_chunks(model, samples, data_config, device=device, progress=progress)
    index = index_tsv(samples)
    if out.suffix == ".npz":
        features = F.normalize(torch.cat(list(chunks)), dim=1).numpy()
        with atomic_path(out) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, features=features, paths=np.array([s.path for s in samples]),
                     pids=np.array([s.pid for s in samples]), camids=np.array([s.camid for s in samples]))
        return out
    first = F.normalize(next(chunks), dim=1)
    with atomic_path(out) as tmp:
        matrix = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(samples), first.shape[1]))
        matrix[: len(first)] = first.numpy()
        row = len(first)
        for chunk in chunks:
            matrix[row : row + len(chunk)] = F.normalize(chunk, dim=1).numpy()
            row += len(chunk)
        matrix.flush()
        del matrix
    # surrogateescape: a name in no valid UTF-8 (bytes from another system) is written back byte for byte
    atomic_write_text(out.with_name(out.name + ".index.tsv"), index, errors="surrogateescape")
    return out


def index_tsv(samples: Sequence[Sample]) -> str:
    """``row, path, pid, camid``, tab-separated, one line per image. A path holding a tab, a line break
    or a quote is quoted as CSV does (``"a\tb.jpg"``), so any name a file system allows reads back."""
    text = io.StringIO()
    writer = csv.writer(text, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(INDEX_HEADER)
    writer.writerows((i, s.path, s.pid, s.camid) for i, s in enumerate(samples))
    return text.getvalue()


def read_index_tsv(index: Path) -> list[Sample]:
    """The samples of an index :func:`index_tsv` wrote, in row order."""
    samples = []
    with open(index, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        rows = csv.reader(handle, delimiter="\t")
        header = next(rows, None)
        if header != list(INDEX_HEADER):
            raise ConfigError(f"{index}: expected the header {'<TAB>'.join(INDEX_HEADER)}, found {header!r}")
        for fields in rows:
            try:
                samples.append(Sample(fields[1], int(fields[2]), int(fields[3])))
            except (IndexError, ValueError):
                raise ConfigError(f"{index}: line {rows.line_num} is not 'row<TAB>path<TAB>pid<TAB>camid': "
                                  f"{fields!r}") from None
    return samples


def read_features(path: str | Path) -> tuple[np.ndarray, list[Sample]]:
    """The features and samples ``write_features`` wrote: (N×D float32, memory-mapped for ``.npy``;
    the N samples with their paths, ids and cameras, pid −1 = unknown)."""
    path = Path(path)
    if path.suffix not in (".npy", ".npz") or not path.is_file():
        raise ConfigError(f"{path}: expected a .npy or .npz file of features written by `udareid extract`")
    if path.suffix == ".npz":
        with np.load(path) as saved:
            missing = {"features", "paths", "pids", "camids"} - set(saved.files)
            if missing:
                raise ConfigError(f"{path}: no {', '.join(sorted(missing))} array; expected a file of `udareid extract`")
            features = saved["features"]
            samples = [Sample(str(p), int(i), int(c)) for p, i, c in zip(saved["paths"], saved["pids"], saved["camids"])]
    else:
        index = path.with_name(path.name + ".index.tsv")
        if not index.is_file():
            raise ConfigError(f"{path}: its index {index.name} (row, path, pid, camid) is missing next to it")
        features = np.load(path, mmap_mode="r")
        samples = read_index_tsv(index)
    if features.ndim != 2 or len(features) != len(samples):
        raise ConfigError(f"{path}: {features.shape} features for {len(samples)} indexed images; "
                          f"expected an N×D matrix with one row per image")
    return features, samples
