"""Re-ID image transforms.

Training: resize, horizontal flip, pad + random crop, RandomErasing (filled with the normalisation
mean, i.e. zero after normalising). No colour jitter: clothing colour is identity evidence.
"""

from __future__ import annotations

from typing import Callable

import torch
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


class MultiCropViews:
    """DINO's views of one image (Caron et al. 2021; TransReID-SSL's person-sized variant): two global
    crops at ``data.height × data.width`` and ``pretrain.local_crops`` small ones at half that size.

    Each crop: random resized crop (bicubic; globals over ``pretrain.crop_scale``, locals over
    ``local_crop_scale``), flip, colour jitter (0.4, 0.4, 0.2, 0.1) with ``jitter_prob``, grayscale
    with ``grayscale_prob``, then Gaussian blur with DINO's fixed probabilities (1.0 on the first global
    crop, 0.1 on the second, 0.5 on the small ones) and ``sigma`` from ``blur_sigma``, solarisation of
    the second global crop with ``solarize_prob``, normalise. Returns ``{"global_0", "global_1"}`` and,
    with small crops, ``"local"`` (``n×3×h×w``)."""

    def __init__(self, config: DataConfig, pretrain) -> None:
        size, small = (config.height, config.width), (config.height // 2, config.width // 2)
        interpolation = T.InterpolationMode.BICUBIC
        colour = [T.RandomHorizontalFlip(),
                  T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=pretrain.jitter_prob),
                  T.RandomGrayscale(p=pretrain.grayscale_prob)]
        finish = [T.ToTensor(), _normalize(config.normalization)]
        sigma = tuple(pretrain.blur_sigma)

        def crop(at: tuple[int, int], scale) -> T.RandomResizedCrop:
            return T.RandomResizedCrop(at, scale=tuple(scale), interpolation=interpolation)

        self.first = T.Compose([crop(size, pretrain.crop_scale), *colour, RandomGaussianBlur(sigma, 1.0), *finish])
        self.second = T.Compose([crop(size, pretrain.crop_scale), *colour, RandomGaussianBlur(sigma, 0.1),
                                 T.RandomSolarize(128, p=pretrain.solarize_prob), *finish])
        self.small = T.Compose([crop(small, pretrain.local_crop_scale), *colour, RandomGaussianBlur(sigma, 0.5), *finish])
        self.local_crops = pretrain.local_crops

    def __call__(self, image) -> dict:
        views = {"global_0": self.first(image), "global_1": self.second(image)}
        if self.local_crops:
            views["local"] = torch.stack([self.small(image) for _ in range(self.local_crops)])
        return views
