"""extract_part_features: one pass gives the global features extract_features gives, and parts that
match the eval-mode part branch by hand; batch size does not matter; the model is left as it was."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from uda_reid.config import DataConfig
from uda_reid.data.datasets import Sample
from uda_reid.data.transforms import build_test_transform
from uda_reid.models.features import extract_features
from uda_reid.models.part_features import extract_part_features
from uda_reid.models.part_model import PartReidModel


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> list[Sample]:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    written = []
    for i in range(5):
        path = folder / f"{i:04d}_c{i % 2 + 1}s1_000000_00.jpg"
        Image.fromarray(rng.integers(0, 256, (32, 16, 3), dtype=np.uint8)).save(path)
        written.append(Sample(str(path), i, i % 2))
    return written


@pytest.fixture(scope="module")
def model() -> PartReidModel:
    torch.manual_seed(0)
    part_model = PartReidModel("resnet18", num_parts=2)
    with torch.no_grad():  # non-trivial running statistics and neck weights
        part_model.train()(torch.randn(4, 3, 32, 16))
        for n, neck in enumerate(part_model.part_necks):
            neck.weight.uniform_(0.5, 1.5 + n)
    return part_model


def config(batch_size: int) -> DataConfig:
    return DataConfig(height=32, width=16, normalization="imagenet", eval_batch_size=batch_size, workers=0)


def parts_by_hand(model: PartReidModel, samples: list[Sample]) -> torch.Tensor:
    transform = build_test_transform(config(1))
    images = torch.stack([transform(Image.open(s.path).convert("RGB")) for s in samples])
    model.eval()
    with torch.no_grad():
        feature_map = model.feature_map(images)
    height, parts = feature_map.shape[2], []
    for n, neck in enumerate(model.part_necks):
        top, bottom = math.floor(n * height / 2), math.ceil((n + 1) * height / 2)
        stripe = feature_map[:, :, top:bottom, :].mean(dim=(2, 3))
        normalised = (stripe - neck.running_mean) / torch.sqrt(neck.running_var + neck.eps) * neck.weight + neck.bias
        parts.append(F.normalize(normalised, dim=1))
    return torch.stack(parts)


def test_one_pass_matches_extract_features_and_the_part_branch(model, samples) -> None:
    model.train()
    state_before = {key: value.clone() for key, value in model.state_dict().items()}
    global_features, part_features = extract_part_features(model, samples, config(2), progress=False)
    assert model.training  # mode restored
    for key, value in model.state_dict().items():  # eval mode: running statistics untouched
        assert torch.equal(value, state_before[key]), key

    torch.testing.assert_close(global_features, extract_features(model, samples, config(3), progress=False))
    expected_parts = parts_by_hand(model, samples)
    torch.testing.assert_close(part_features, expected_parts, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(part_features.norm(dim=2), torch.ones(2, 5))


def test_batch_size_does_not_change_the_features_and_eval_mode_is_kept(model, samples) -> None:
    model.eval()
    one = extract_part_features(model, samples, config(1), progress=False)
    all_at_once = extract_part_features(model, samples, config(8), progress=False)
    assert not model.training
    torch.testing.assert_close(one[0], all_at_once[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(one[1], all_at_once[1], rtol=1e-4, atol=1e-5)
    # rows follow the sample order: reversing the samples reverses the rows
    reversed_global, reversed_parts = extract_part_features(model, samples[::-1], config(8), progress=False)
    torch.testing.assert_close(reversed_global, all_at_once[0].flip(0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(reversed_parts, all_at_once[1].flip(1), rtol=1e-4, atol=1e-5)


def test_mode_is_restored_when_an_image_cannot_be_read(model, samples, tmp_path) -> None:
    from uda_reid.errors import ImageReadError

    broken = tmp_path / "0001_c1s1_000000_00.jpg"
    broken.write_bytes(b"not a jpeg")
    model.train()
    with pytest.raises(ImageReadError, match="cannot read image"):
        extract_part_features(model, [*samples, Sample(str(broken), 1, 0)], config(2), progress=False)
    assert model.training
