"""Re-ID image transforms.

Training: resize, horizontal flip, pad + random crop, RandomErasing (filled with the normalisation
mean, i.e. zero after normalising). No colour jitter: clothing colour is identity evidence.
"""

from __future__ import annotations

from torchvision import transforms as T

from ..config import NORMALIZATIONS, DataConfig
from ..errors import ConfigError

_INTERPOLATIONS = {
    "bicubic": T.InterpolationMode.BICUBIC,
    "bilinear": T.InterpolationMode.BILINEAR,
    "nearest": T.InterpolationMode.NEAREST,
}


def _normalize(name: str) -> T.Normalize:
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
