"""Batched feature extraction (no augmentation), with progress; sharded over processes when there are several."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..config import DataConfig
from ..device import loader_workers
from ..data.datasets import Sample
from ..data.image_dataset import ImageDataset
from ..data.transforms import build_test_transform

if TYPE_CHECKING:
    from ..distributed import DistributedContext


def eval_loader(samples: Sequence[Sample], data_config: DataConfig, device: torch.device) -> DataLoader:
    """Test-time transform, ``eval_batch_size`` batches, sample order kept."""
    return DataLoader(
        ImageDataset(samples, build_test_transform(data_config)),
        batch_size=data_config.eval_batch_size,
        shuffle=False,
        num_workers=loader_workers(data_config.workers),
        pin_memory=device.type == "cuda",
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
    device = device or next(model.parameters()).device
    loader = eval_loader(samples, data_config, device)
    was_training = model.training
    model.eval()
    chunks = []
    try:
        for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
            chunks.append(model(batch["image"].to(device, non_blocking=True)).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(chunks) if chunks else torch.empty(0, 0)
