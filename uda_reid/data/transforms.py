"""Re-ID image transforms.

Training: resize, horizontal flip, pad + random crop, RandomErasing (filled with the normalisation
mean, i.e. zero after normalising). No colour jitter: clothing colour is identity evidence.
"""

from __future__ import annotations

from typing import Callable

from torchvision import transforms as T

from ..config import AUTO_NORMALIZATION, NORMALIZATIONS, DataConfig
from ..errors import ConfigError

_INTERPOLATIONS = {
    "bicubic": T.InterpolationMode.BICUBIC,
    "bilinear": T.InterpolationMode.BILINEAR,
    "nearest": T.InterpolationMode.NEAREST,
}


def _normalize(name: str) -> T.Normalize:
    if name == AUTO_NORMALIZATION:  # the run resolves it from its initial weights before building transforms
        raise ConfigError("data.normalization is auto: resolve it from the initial weights first "
                          "(uda_reid.models.normalization.with_resolved_normalization), or name the statistics")
    if name not in NORMALIZATIONS:
        raise ConfigError(
            f"data.normalization: unknown preset {name!r}; known: {', '.join(NORMALIZATIONS)}"
        )
    mean, std = NORMALIZATIONS[name]
    return T.Normalize(mean=mean, std=std)


def _interpolation(name: str) -> T.InterpolationMode:
    if name not in _INTERPOLATIONS:
        raise ConfigError(
            f"data.interpolation: unknown mode {name!r}; known: {', '.join(_INTERPOLATIONS)}"
        )
    return _INTERPOLATIONS[name]


def build_train_transform(config: DataConfig) -> T.Compose:
    """PIL image -> augmented, normalised 3×H×W tensor."""
    size = (config.height, config.width)
    steps: list = [T.Resize(size, interpolation=_interpolation(config.interpolation))]
    if config.flip_prob > 0:
        steps.append(T.RandomHorizontalFlip(p=config.flip_prob))
    if config.pad > 0:
        steps += [T.Pad(config.pad), T.RandomCrop(size)]
    steps += [T.ToTensor(), _normalize(config.normalization)]
    if config.random_erasing_prob > 0:
        # value=0 after normalisation is the per-channel mean, as the reference code fills.
        steps.append(T.RandomErasing(p=config.random_erasing_prob, value=0))
    return T.Compose(steps)


def build_test_transform(config: DataConfig) -> T.Compose:
    """PIL image -> resized, normalised 3×H×W tensor (no augmentation)."""
    return T.Compose(
        [
            T.Resize((config.height, config.width), interpolation=_interpolation(config.interpolation)),
            T.ToTensor(),
            _normalize(config.normalization),
        ]
    )


class RandomGaussianBlur:
    """PIL Gaussian blur with a radius drawn uniformly from ``sigma`` (MoCo v2's blur), applied with ``p``."""

    def __init__(self, sigma: tuple[float, float], p: float) -> None:
        self.sigma, self.p = sigma, p

    def __call__(self, image):
        import random

        from PIL import ImageFilter

        if random.random() >= self.p:
            return image
        return image.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))


def build_pretrain_transform(config: DataConfig, pretrain) -> T.Compose:
    """One augmented view for contrastive pre-training (LUPerson's MoCo v2 recipe, docs/methods.md §7):
    random resized crop, no colour jitter (clothing colour is identity evidence), grayscale, blur,
    flip, normalise, random erasing filled with 0 up to ``erasing_max_area``. ``pretrain`` is a
    ``PretrainConfig``."""
    size = (config.height, config.width)
    return T.Compose([
        T.RandomResizedCrop(size, scale=tuple(pretrain.crop_scale), interpolation=_interpolation(config.interpolation)),
        T.RandomGrayscale(p=pretrain.grayscale_prob),
        RandomGaussianBlur(tuple(pretrain.blur_sigma), pretrain.blur_prob),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        _normalize(config.normalization),
        T.RandomErasing(p=pretrain.erasing_prob, scale=(0.02, pretrain.erasing_max_area), ratio=(0.3, 3.3), value=0),
    ])


class ContrastiveViews:
    """Image -> ``{"query": view, "key": view}`` (two independent augmentations), plus ``"original"`` (the
    image only resized and normalised: UP-ReID's x_r) when ``original`` is set. ``ImageDataset`` with this
    transform yields batches whose ``image`` is that dict."""

    def __init__(self, view: Callable, original: Callable | None = None) -> None:
        self.view, self.original = view, original

    def __call__(self, image) -> dict:
        views = {"query": self.view(image), "key": self.view(image)}
        if self.original is not None:
            views["original"] = self.original(image)
        return views
