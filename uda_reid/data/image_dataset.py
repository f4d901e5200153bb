"""Pixels for a list of samples: a torch ``Dataset`` that decodes images and names bad files."""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from ..errors import ImageReadError
from .datasets import Sample


def read_image(path: str) -> Image.Image:
    """Decode ``path`` as RGB; a missing, unreadable or truncated file is an ImageReadError."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(
            f"cannot read image {path}: {error}. Remove or replace the file, or set "
            f"data.skip_unreadable: true (--set data.skip_unreadable=true) to skip such files"
        ) from None


def readable_samples(samples: Sequence[Sample], progress: bool = True) -> list[Sample]:
    """The samples whose image decodes; the others are reported in one warning and dropped."""
    good, bad = [], []
    for sample in tqdm(samples, desc="checking images", disable=not progress, leave=False):
        try:
            read_image(sample.path)
        except ImageReadError:
            bad.append(sample.path)
        else:
            good.append(sample)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        warnings.warn(f"skipped {len(bad)} unreadable image(s): {shown}", stacklevel=2)
    return good


class ImageDataset(Dataset):
    """Item ``i`` is ``{"image": transformed image, "pid": int, "camid": int, "index": i}``.

    ``labels`` overrides the samples' person ids (pseudo-labels on the target domain).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable | None = None,
        labels: Sequence[int] | None = None,
    ) -> None:
        if labels is not None and len(labels) != len(samples):
            raise ValueError(f"got {len(labels)} labels for {len(samples)} samples")
        self.samples = list(samples)
        self.transform = transform
        self.labels = None if labels is None else [int(label) for label in labels]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        image = read_image(sample.path)
        if self.transform is not None:
            image = self.transform(image)
        pid = sample.pid if self.labels is None else self.labels[index]
        return {"image": image, "pid": pid, "camid": sample.camid, "index": index}
