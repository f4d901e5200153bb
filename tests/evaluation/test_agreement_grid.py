"""The lowest / highest agreement grid: which images it picks, and that it draws them."""

import numpy as np
import pytest
from PIL import Image

from uda_reid.data.layouts import Sample
from uda_reid.errors import ConfigError
from uda_reid.evaluation.agreement_grid import extreme_indices, save_agreement_grid


def test_extremes_rank_images_by_their_mean_agreement_over_parts():
    scores = np.array([[0.9, 0.9, 0.9], [0.1, 0.2, 0.0], [0.5, 0.5, 0.5], [0.0, 1.0, 0.2], [0.8, 0.7, 1.0]])
    lowest, highest = extreme_indices(scores, 2)
    assert lowest.tolist() == [1, 3] and highest.tolist() == [0, 4]  # means .1 .4 | .9 .833, highest first
    low, high = extreme_indices(scores[:, 0], 10)  # never more than half the images per row
    assert len(low) == len(high) == 2


def test_grid_is_written_and_a_mismatch_with_the_dataset_is_named(tmp_path):
    samples = []
    for i in range(6):
        path = tmp_path / f"{i:04d}_c1s1_000001_00.jpg"
        Image.new("RGB", (16, 32), (40 * i, 0, 0)).save(path)
        samples.append(Sample(str(path), i, 0))
    out = save_agreement_grid(samples, np.linspace(0, 1, 6).reshape(6, 1).repeat(3, axis=1), tmp_path / "grid.png", count=2)
    assert out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ConfigError, match="cover 5 images but the target train split has 6"):
        save_agreement_grid(samples, np.zeros((5, 3)), tmp_path / "other.png")
