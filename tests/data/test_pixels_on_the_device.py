"""The image transforms' two halves: uint8 pixels and the erasing rectangle from the workers, the
arithmetic on the device. Together they are bit for bit torchvision's CPU pipeline with the same draws."""

import math
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import default_collate
from torchvision import transforms as T

from uda_reid.config import NORMALIZATIONS, DataConfig
from uda_reid.data.transforms import NO_ERASING, PixelFinish, eval_pixels, pixel_finish, train_pixels


def people(count: int, height: int, width: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for _ in range(count)]


def torchvision_train_pipeline(config: DataConfig) -> T.Compose:
    """What the training transform was, whole on the CPU: the reference of the split."""
    size = (config.height, config.width)
    mean, std = NORMALIZATIONS[config.normalization]
    return T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.RandomHorizontalFlip(config.flip_prob), T.Pad(config.pad), T.RandomCrop(size),
                      T.ToTensor(), T.Normalize(mean, std), T.RandomErasing(p=config.random_erasing_prob, value=0)])


@pytest.mark.parametrize("size", [(32, 16), (6, 3)])  # (6, 3): erasing often finds no rectangle that fits
def test_the_two_halves_are_torchvisions_pipeline_bit_for_bit_with_the_same_draws(size):
    config = DataConfig(height=size[0], width=size[1], normalization="imagenet", pad=2, flip_prob=0.5,
                        random_erasing_prob=0.5, erasing="torchvision")
    images = people(64, 40, 20)
    torch.manual_seed(3)
    reference = torch.stack([torchvision_train_pipeline(config)(image) for image in images])
    torch.manual_seed(3)
    items = [train_pixels(config)(image) for image in images]
    batch = default_collate(items)
    assert batch["pixels"].dtype == torch.uint8 and batch["erase"].shape == (64, 4)
    finished = pixel_finish(config)(batch, "cpu")
    assert torch.equal(finished, reference)
    whole = (batch["erase"] == torch.tensor(NO_ERASING)).all(dim=1)
    assert 0 < whole.sum() < 64  # both kinds of image were in the batch
    # one image at a time gives the same as the batch
    assert torch.equal(pixel_finish(config)(items[5], "cpu"), finished[5])


class SpecErasing:
    """The reference code's random erasing as its description reads, applied to a normalised image."""

    def __init__(self, p=0.5, area=(0.02, 0.4), min_aspect=0.3, fill=(0.485, 0.456, 0.406), attempts=100):
        self.p, self.area, self.min_aspect, self.fill, self.attempts = p, area, min_aspect, fill, attempts

    def __call__(self, image):
        if random.uniform(0, 1) >= self.p:
            return image
        _, height, width = image.shape
        for _ in range(self.attempts):
            share, aspect = random.uniform(*self.area), random.uniform(self.min_aspect, 1 / self.min_aspect)
            h = int(round(math.sqrt(share * height * width * aspect)))
            w = int(round(math.sqrt(share * height * width / aspect)))
            if h < height and w < width:
                top, left = random.randint(0, height - h), random.randint(0, width - w)
                for channel, value in enumerate(self.fill):
                    image[channel, top : top + h, left : left + w] = value
                return image
        return image


def test_the_reference_erasing_is_the_reference_pipeline_bit_for_bit_with_the_same_draws():
    config = DataConfig(height=32, width=16, normalization="imagenet", pad=2, random_erasing_prob=0.5)
    assert config.erasing == "reference"  # the default
    mean, std = NORMALIZATIONS["imagenet"]
    reference = T.Compose([T.Resize((32, 16), interpolation=T.InterpolationMode.BICUBIC), T.RandomHorizontalFlip(0.5),
                           T.Pad(2), T.RandomCrop((32, 16)), T.ToTensor(), T.Normalize(mean, std), SpecErasing()])
    images = people(64, 40, 20, seed=4)
    torch.manual_seed(5)
    random.seed(5)
    expected = torch.stack([reference(image) for image in images])
    torch.manual_seed(5)
    random.seed(5)
    batch = default_collate([train_pixels(config)(image) for image in images])
    assert torch.equal(pixel_finish(config)(batch, "cpu"), expected)
    erased = (batch["erase"] != torch.tensor(NO_ERASING)).all(dim=1)
    assert 10 < erased.sum() < 54
    top, left, height, width = batch["erase"][erased][0].tolist()
    patch = pixel_finish(config)(batch, "cpu")[erased][0][:, top : top + height, left : left + width]
    assert torch.equal(patch, torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1).expand_as(patch))


def test_evaluation_pixels_finish_to_torchvisions_resize_totensor_normalize():
    config = DataConfig(height=24, width=12, normalization="lup")
    mean, std = NORMALIZATIONS["lup"]
    reference = T.Compose([T.Resize((24, 12), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(), T.Normalize(mean, std)])
    images = people(8, 50, 25, seed=1)
    batch = default_collate([eval_pixels(config)(image) for image in images])
    assert set(batch) == {"pixels"}
    assert torch.equal(pixel_finish(config)(batch, "cpu"), torch.stack([reference(image) for image in images]))


def test_views_and_tensors_that_are_not_pixels_are_only_moved():
    finish = PixelFinish("imagenet")
    views = {"query": torch.ones(2, 3, 4, 4), "key": torch.zeros(2, 3, 4, 4)}
    assert finish(views, "cpu") is views
    tensor = torch.randn(2, 3, 4, 4)
    assert torch.equal(finish(tensor, "cpu"), tensor)


@pytest.mark.cuda
def test_on_a_gpu_the_finish_equals_the_cpu_finish():
    config = DataConfig(height=32, width=16, normalization="imagenet", random_erasing_prob=0.5)
    torch.manual_seed(0)
    batch = default_collate([train_pixels(config)(image) for image in people(32, 40, 20)])
    on_gpu = pixel_finish(config)(batch, "cuda")
    assert on_gpu.device.type == "cuda"
    assert torch.equal(on_gpu.cpu(), pixel_finish(config)(batch, "cpu"))
