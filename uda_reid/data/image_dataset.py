"""Pixels for a list of samples: a torch ``Dataset`` that decodes images and names bad files."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Callable, Sequence

from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from ..errors import ImageReadError
from .datasets import ReidDataset, Sample


def read_image(path: str) -> Image.Image:
    """Decode ``path`` as RGB; a missing, unreadable or truncated file is an ImageReadError, and so is
    an image larger than PIL's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``, ~89 megapixels;
    a person crop is a few thousand): decoding it would take gigabytes, and PIL's own error or warning
    names no file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageReadError(
            f"cannot read image {path}: {error}. Remove or replace the file, or set "
            f"data.skip_unreadable: true (--set data.skip_unreadable=true) to skip such files"
        ) from None


def split_readable(samples: Sequence[Sample], progress: bool = True, desc: str = "checking images") -> tuple[list[Sample], list[str]]:
    """The samples whose image decodes, and the paths of those that do not."""
    good, bad = [], []
    for sample in tqdm(samples, desc=desc, disable=not progress, leave=False):
        try:
            read_image(sample.path)
        except ImageReadError:
            bad.append(sample.path)
        else:
            good.append(sample)
    return good, bad


def readable_samples(samples: Sequence[Sample], progress: bool = True) -> list[Sample]:
    """The samples whose image decodes; the others are reported in one warning and dropped."""
    good, bad = split_readable(samples, progress)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        warnings.warn(f"skipped {len(bad)} unreadable image(s): {shown}", stacklevel=2)
    return good


def readable_dataset(dataset: ReidDataset, progress: bool = True) -> tuple[ReidDataset, dict[str, list[str]]]:
    """``dataset`` without the images that do not decode, in every split (``data.skip_unreadable``),
    and the skipped paths per split, so the caller can count them on screen and in its log."""
    kept, skipped = {}, {}
    for split in ("train", "query", "gallery"):
        kept[split], skipped[split] = split_readable(getattr(dataset, split), progress, f"checking {split} images")
    return dataclasses.replace(dataset, **kept), {split: bad for split, bad in skipped.items() if bad}


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
