"""The image transforms' two halves: uint8 pixels and the erasing rectangle from the workers, the
arithmetic on the device. Together they are bit for bit torchvision's CPU pipeline with the same draws."""

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
                        random_erasing_prob=0.5)
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
