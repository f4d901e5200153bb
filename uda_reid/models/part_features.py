"""Batched extraction of global and part features in one backbone pass (PPLR), with progress."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm import tqdm

from ..config import DataConfig
from ..data.datasets import Sample
from ..data.transforms import pixel_finish
from .part_model import PartReidModel
from .features import eval_loader


@torch.no_grad()
def extract_part_features(
    model: PartReidModel,
    samples: Sequence[Sample],
    data_config: DataConfig,
    *,
    device: torch.device | None = None,
    progress: bool = True,
    desc: str = "extracting global and part features",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Global ``N×D`` and part ``P×N×C`` L2-normalised float32 features on the CPU, in sample order.

    PPLR clusters the global features and scores the cross-agreement of each part with them every
    epoch; one pass per image (``PartReidModel.forward_all``, eval mode, no augmentation) gives
    both. The model's train/eval mode is restored afterwards, as in ``extract_features``.
    """
    device = device or next(model.parameters()).device
    loader = eval_loader(samples, data_config, device)
    finish = pixel_finish(data_config)
    was_training = model.training
    model.eval()
    global_chunks, part_chunks = [], []
    try:
        for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
            global_features, part_features = model.forward_all(finish(batch["image"], device))
            global_chunks.append(global_features.float().cpu())
            part_chunks.append(part_features.float().cpu())
    finally:
        model.train(was_training)
    if not global_chunks:
        return torch.empty(0, model.feature_dim), torch.empty(model.num_parts, 0, model.part_feature_dim)
    return torch.cat(global_chunks), torch.cat(part_chunks, dim=1)
