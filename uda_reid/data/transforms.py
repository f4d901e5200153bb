"""Re-ID image transforms, in two halves: pixels on the CPU, arithmetic on the device.

Training: resize, horizontal flip, pad + random crop, random erasing (``data.erasing``: the reference
code's by default, torchvision's by name). No colour jitter: clothing colour is identity evidence.

The DataLoader's workers run only what needs the image (decode, resize, flip, pad, crop) and draw the
erasing rectangle, and hand over uint8 pixels (a quarter of float32's bytes to pin and copy);
:class:`PixelFinish` turns a batch of them into normalised, erased float images on the device that
trains, so a GPU is not kept waiting for CPU arithmetic. The result is bit for bit that of
ToTensor → Normalize → the erasing on the CPU, with the same random draws (tested).
``build_train_transform`` / ``build_test_transform`` give whole images on the CPU (both halves).
"""

from __future__ import annotations

import math
import random
from typing import Callable

import torch
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from ..config import AUTO_NORMALIZATION, NORMALIZATIONS, DataConfig
from ..errors import ConfigError

_INTERPOLATIONS = {
    "bicubic": T.InterpolationMode.BICUBIC,
    "bilinear": T.InterpolationMode.BILINEAR,
    "nearest": T.InterpolationMode.NEAREST,
}
NO_ERASING = (-1, -1, -1, -1)  # the erasing rectangle of an image left whole


def _statistics(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if name == AUTO_NORMALIZATION:  # the run resolves it from its initial weights before building transforms
        raise ConfigError("data.normalization is auto: resolve it from the initial weights first "
                          "(uda_reid.models.normalization.with_resolved_normalization), or name the statistics")
    if name not in NORMALIZATIONS:
        raise ConfigError(
            f"data.normalization: unknown preset {name!r}; known: {', '.join(NORMALIZATIONS)}"
        )
    return NORMALIZATIONS[name]


def _normalize(name: str) -> T.Normalize:
    mean, std = _statistics(name)
    return T.Normalize(mean=mean, std=std)


def _interpolation(name: str) -> T.InterpolationMode:
    if name not in _INTERPOLATIONS:
        raise ConfigError(
            f"data.interpolation: unknown mode {name!r}; known: {', '.join(_INTERPOLATIONS)}"
        )
    return _INTERPOLATIONS[name]


class ReferenceErasing:
    """Random erasing as Zhong et al. wrote it and SpCL, cluster-contrast and PPLR use it (their
    ``RandomErasing(probability=0.5, sl=0.02, sh=0.4, r1=0.3, mean=[0.485, 0.456, 0.406])`` after
    Normalize, docs/methods.md §6): with probability ``p``, up to ``attempts`` rectangles are drawn,
    area uniform in ``area`` × the image's, height/width uniform in ``aspect`` ([r1, 1/r1]), until
    one fits strictly inside; its pixels get ``fill`` per channel in normalised space (the fill is
    :class:`PixelFinish`'s). Python's ``random`` draws, as the reference: the DataLoader seeds it in
    every worker from the main process's torch generator, so a resumed run draws the same rectangles.

    ``whole_side=True`` is CAP's own copy of the class: a rectangle may span the whole height or width
    (``<=`` where the others test ``<``), and a draw equal to ``p`` erases (its ``>`` against ``>=``).
    """

    def __init__(self, p: float, area: tuple[float, float] = (0.02, 0.4), aspect: tuple[float, float] = (0.3, 1 / 0.3),
                 attempts: int = 100, *, whole_side: bool = False) -> None:
        self.p, self.area, self.aspect, self.attempts, self.whole_side = p, tuple(area), tuple(aspect), attempts, whole_side

    def rectangle(self, pixels: torch.Tensor) -> tuple[int, int, int, int] | None:
        """(top, left, height, width) of the rectangle to erase in ``pixels`` (C×H×W), or None."""
        draw = random.uniform(0, 1)
        if draw > self.p or (draw == self.p and not self.whole_side):
            return None
        height, width = pixels.shape[-2:]
        for _ in range(self.attempts):
            target = random.uniform(*self.area) * height * width
            aspect = random.uniform(*self.aspect)
            h, w = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            fits = (w <= width and h <= height) if self.whole_side else (w < width and h < height)
            if fits:
                return random.randint(0, height - h), random.randint(0, width - w), h, w
        return None


class TorchvisionErasing:
    """torchvision's ``RandomErasing(p, value=0)``: the same random calls, so the same rectangles
    (area 2-33 %, log-uniform aspect in [0.3, 3.3], 10 attempts); zero fill = the normalisation mean."""

    def __init__(self, p: float) -> None:
        self.transform = T.RandomErasing(p=p, value=0)

    def rectangle(self, pixels: torch.Tensor) -> tuple[int, int, int, int] | None:
        if torch.rand(1) >= self.transform.p:
            return None
        top, left, height, width, value = T.RandomErasing.get_params(
            pixels, scale=self.transform.scale, ratio=self.transform.ratio, value=[0.0])
        return None if value is pixels else (top, left, height, width)  # pixels: no rectangle fitted


class PixelsForDevice:
    """PIL image -> ``{"pixels": 3×H×W uint8, "erase": (top, left, height, width)}``: the CPU half.

    The erasing rectangle is drawn here, in the worker (:class:`ReferenceErasing` or
    :class:`TorchvisionErasing`); :data:`NO_ERASING` when the image stays whole. Without erasing
    (evaluation) only ``"pixels"``.
    """

    def __init__(self, erasing: ReferenceErasing | TorchvisionErasing | None = None) -> None:
        self.erasing = erasing

    def __call__(self, image) -> dict:
        pixels = TF.pil_to_tensor(image)
        if self.erasing is None:
            return {"pixels": pixels}
        box = self.erasing.rectangle(pixels) or NO_ERASING
        return {"pixels": pixels, "erase": torch.tensor(box, dtype=torch.int32)}


class PixelFinish:
    """uint8 pixels (a batch ``B×3×H×W`` or one image) -> normalised float32, erased: the device half.

    The arithmetic of ToTensor (÷255) and Normalize (− mean, ÷ std), in that order and in float32, then
    the erasing rectangles set to ``fill`` (0: the normalisation mean). Anything that is not a
    ``{"pixels": ...}`` dict (pre-training's views, tensors made by hand) is only moved to the device.
    """

    def __init__(self, normalization: str, fill: tuple[float, float, float] | float = 0.0) -> None:
        mean, std = _statistics(normalization)
        self.mean, self.std = torch.tensor(mean), torch.tensor(std)
        self.fill = torch.tensor(fill, dtype=torch.float32).expand(3).clone()

    def __call__(self, images, device: torch.device | str = "cpu"):
        if not (isinstance(images, dict) and "pixels" in images):
            return images.to(device, non_blocking=True) if isinstance(images, torch.Tensor) else images
        pixels = images["pixels"].to(device, non_blocking=True)
        single = pixels.dim() == 3
        batch = pixels.unsqueeze(0) if single else pixels
        # a tensor divisor: with a Python number CUDA multiplies by 1/255 instead, a last bit off
        out = batch.float().div_(torch.full((), 255.0, device=batch.device))
        out.sub_(self.mean.to(out.device).view(1, -1, 1, 1)).div_(self.std.to(out.device).view(1, -1, 1, 1))
        if "erase" in images:
            boxes = images["erase"].to(out.device, non_blocking=True).view(-1, 4).long()
            top, left, height, width = (boxes[:, i].view(-1, 1, 1) for i in range(4))
            rows = torch.arange(out.shape[2], device=out.device).view(1, -1, 1)
            cols = torch.arange(out.shape[3], device=out.device).view(1, 1, -1)
            inside = (rows >= top) & (rows < top + height) & (cols >= left) & (cols < left + width)
            out.copy_(torch.where(inside.unsqueeze(1), self.fill.to(out.device).view(1, -1, 1, 1), out))
        return out[0] if single else out


def finish_batch(batch: dict, finish: PixelFinish, device: torch.device) -> dict:
    """``batch`` with its ``"image"`` finished on ``device`` (other entries as they are)."""
    return {**batch, "image": finish(batch["image"], device)}


def train_pixels(config: DataConfig) -> Callable:
    """The CPU half of training: PIL image -> uint8 pixels + erasing rectangle (:class:`PixelsForDevice`)."""
    size = (config.height, config.width)
    steps: list = [T.Resize(size, interpolation=_interpolation(config.interpolation))]
    if config.flip_prob > 0:
        steps.append(T.RandomHorizontalFlip(p=config.flip_prob))
    if config.pad > 0:
        steps += [T.Pad(config.pad), T.RandomCrop(size)]
    _statistics(config.normalization)  # a bad preset is named when the transform is built, not in a worker
    return T.Compose([*steps, PixelsForDevice(erasing_rule(config))])


def erasing_rule(config: DataConfig) -> ReferenceErasing | TorchvisionErasing | None:
    """``data.erasing``'s rectangle drawer (None without erasing)."""
    if config.random_erasing_prob <= 0:
        return None
    if config.erasing == "torchvision":
        return TorchvisionErasing(config.random_erasing_prob)
    high = config.erasing_max_aspect if config.erasing_max_aspect is not None else 1 / config.erasing_min_aspect
    return ReferenceErasing(config.random_erasing_prob, tuple(config.erasing_area), (config.erasing_min_aspect, high),
                            config.erasing_attempts, whole_side=config.erasing == "cap")


def eval_pixels(config: DataConfig) -> Callable:
    """The CPU half of evaluation: PIL image -> resized uint8 pixels."""
    _statistics(config.normalization)
    return T.Compose([T.Resize((config.height, config.width), interpolation=_interpolation(config.interpolation)),
                      PixelsForDevice()])


def pixel_finish(config: DataConfig) -> PixelFinish:
    """The device half for ``config``'s normalisation and erasing fill (torchvision's: 0, the mean)."""
    return PixelFinish(config.normalization, 0.0 if config.erasing == "torchvision" else tuple(config.erasing_fill))


def build_train_transform(config: DataConfig) -> Callable:
    """PIL image -> augmented, normalised 3×H×W float tensor on the CPU (both halves)."""
    return T.Compose([train_pixels(config), pixel_finish(config)])


def build_test_transform(config: DataConfig) -> Callable:
    """PIL image -> resized, normalised 3×H×W float tensor on the CPU (no augmentation; both halves)."""
    return T.Compose([eval_pixels(config), pixel_finish(config)])


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
