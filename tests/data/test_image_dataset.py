"""Pixels: a truncated or non-image file is named, and can be skipped with a warning."""

import numpy as np
import pytest
import torch
from PIL import Image

from uda_reid.config import DataConfig
from uda_reid.data.datasets import Sample
from uda_reid.data.image_dataset import ImageDataset, readable_samples
from uda_reid.data.transforms import build_test_transform, build_train_transform
from uda_reid.errors import ConfigError, ImageReadError


@pytest.fixture()
def images(tmp_path):
    good = tmp_path / "0001_c1s1_000001_00.jpg"
    Image.fromarray(np.full((32, 16, 3), 200, np.uint8)).save(good)
    truncated = tmp_path / "0002_c2s1_000001_00.jpg"
    truncated.write_bytes(good.read_bytes()[:60])
    text = tmp_path / "0003_c3s1_000001_00.jpg"
    text.write_text("not an image")
    return [Sample(str(good), 0, 0), Sample(str(truncated), 1, 1), Sample(str(text), 2, 2)]


def test_item_has_image_label_camera_and_index(images):
    dataset = ImageDataset(images[:1], build_test_transform(DataConfig(height=16, width=8, normalization="imagenet")), labels=[5])
    item = dataset[0]
    assert item["image"].shape == (3, 16, 8)
    assert (item["pid"], item["camid"], item["index"]) == (5, 0, 0)


@pytest.mark.parametrize("index", [1, 2])
def test_unreadable_image_error_names_the_file_and_the_way_out(images, index):
    dataset = ImageDataset(images, build_test_transform(DataConfig(height=16, width=8, normalization="imagenet")))
    with pytest.raises(ImageReadError, match=rf"{images[index].path}.*data.skip_unreadable"):
        dataset[index]


def test_readable_samples_skips_with_one_warning(images):
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable image\(s\)"):
        kept = readable_samples(images, progress=False)
    assert kept == images[:1]


@pytest.mark.parametrize(("erasing", "fill"), [("torchvision", (0.0, 0.0, 0.0)), ("reference", (0.485, 0.456, 0.406))])
def test_train_transform_keeps_colours_and_erases_with_its_fill(erasing, fill):
    config = DataConfig(height=16, width=8, normalization="imagenet", pad=0, flip_prob=0, random_erasing_prob=1.0,
                        erasing=erasing)
    image = Image.fromarray(np.full((16, 8, 3), (255, 0, 0), np.uint8))
    out = build_train_transform(config)(image)
    test_out = build_test_transform(config)(image)
    # Erased pixels hold the fill (torchvision: 0, the normalisation mean; the reference: its three
    # numbers in normalised space); every other pixel is the unjittered colour.
    erased = (out == torch.tensor(fill).view(3, 1, 1)).all(dim=0)
    assert erased.any() and not erased.all()
    torch.testing.assert_close(out[:, ~erased], test_out[:, ~erased])


def test_unknown_normalisation_is_named():
    with pytest.raises(ConfigError, match="data.normalization: unknown preset 'lupp'"):
        build_test_transform(DataConfig(normalization="lupp"))
