"""The reference code's random erasing, by its properties: erased with probability 0.5, an area of
2-40 % of the image, height/width uniform in [0.3, 1/0.3], the three fill values exactly."""

import random

import numpy as np
import torch
from scipy import stats

from uda_reid.config import DataConfig
from uda_reid.data.transforms import ReferenceErasing, pixel_finish, train_pixels

LARGE = torch.zeros(3, 4000, 4000, dtype=torch.uint8)  # rounding a side to pixels moves the shares < 0.3 %


def draws(count: int, seed: int = 0, probability: float = 1.0):
    random.seed(seed)
    erasing = ReferenceErasing(probability)
    return [erasing.rectangle(LARGE) for _ in range(count)]


def test_an_image_is_erased_with_probability_one_half():
    erased = sum(box is not None for box in draws(4000, probability=0.5))
    assert stats.binomtest(erased, 4000, 0.5).pvalue > 1e-3


def test_the_erased_share_is_uniform_between_two_and_forty_percent():
    boxes = np.array(draws(6000, seed=1), dtype=float)
    share, aspect = boxes[:, 2] * boxes[:, 3] / 4000**2, boxes[:, 2] / boxes[:, 3]
    assert share.min() >= 0.02 * 0.995 and share.max() <= 0.4 * 1.005
    # rectangles taller or wider than the image are drawn again: where the aspect is within [0.5, 2],
    # every share fits, so there the share is the reference's uniform draw untouched
    within = (aspect >= 0.5) & (aspect <= 2)
    assert stats.kstest(share[within], stats.uniform(0.02, 0.38).cdf).pvalue > 1e-3


def test_the_aspect_is_uniform_between_0_3_and_its_inverse():
    boxes = np.array(draws(6000, seed=2), dtype=float)
    share, aspect = boxes[:, 2] * boxes[:, 3] / 4000**2, boxes[:, 2] / boxes[:, 3]
    assert aspect.min() >= 0.3 * 0.99 and aspect.max() <= (1 / 0.3) * 1.01
    small = share <= 0.25  # shares that fit at every aspect: the aspect is the uniform draw untouched
    assert stats.kstest(aspect[small], stats.uniform(0.3, 1 / 0.3 - 0.3).cdf).pvalue > 1e-3


def test_the_erased_pixels_hold_the_three_fill_values_exactly():
    from PIL import Image

    config = DataConfig(height=64, width=32, normalization="lup", random_erasing_prob=1.0)
    random.seed(3)
    torch.manual_seed(3)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 32, 3), dtype=np.uint8))
    item = train_pixels(config)(image)
    top, left, height, width = item["erase"].tolist()
    out = pixel_finish(config)(item, "cpu")
    patch = out[:, top : top + height, left : left + width]
    assert patch.numel() > 0
    for channel, value in enumerate((0.485, 0.456, 0.406)):
        assert (patch[channel] == torch.tensor(value, dtype=torch.float32)).all()
    outside = torch.ones(64, 32, dtype=torch.bool)
    outside[top : top + height, left : left + width] = False
    assert not (out[0][outside] == torch.tensor(0.485)).all()


def test_an_image_too_small_for_any_rectangle_stays_whole():
    random.seed(0)
    for _ in range(50):  # as in the reference, a rectangle rounded to no pixel "fits" and erases nothing
        box = ReferenceErasing(1.0, attempts=100).rectangle(torch.zeros(3, 1, 1))
        assert box is None or box[2] * box[3] == 0


def test_cap_erases_two_to_twenty_percent_with_aspect_up_to_three():
    config = DataConfig(erasing="cap", erasing_area=[0.02, 0.2], erasing_max_aspect=3.0, random_erasing_prob=1.0)
    from uda_reid.data.transforms import erasing_rule

    erasing = erasing_rule(config)
    assert erasing.whole_side and erasing.area == (0.02, 0.2) and erasing.aspect == (0.3, 3.0)
    random.seed(4)
    boxes = np.array([erasing.rectangle(LARGE) for _ in range(6000)], dtype=float)
    share, aspect = boxes[:, 2] * boxes[:, 3] / 4000**2, boxes[:, 2] / boxes[:, 3]
    assert share.min() >= 0.02 * 0.995 and share.max() <= 0.2 * 1.005
    assert aspect.min() >= 0.3 * 0.99 and aspect.max() <= 3.0 * 1.01
    assert stats.kstest(share, stats.uniform(0.02, 0.18).cdf).pvalue > 1e-3  # every CAP rectangle fits a square
    assert stats.kstest(aspect, stats.uniform(0.3, 2.7).cdf).pvalue > 1e-3


def test_only_caps_rule_lets_a_rectangle_span_a_whole_side():
    image = torch.zeros(3, 8, 4, dtype=torch.uint8)
    whole = dict(area=(1.0, 1.0), aspect=(2.0, 2.0), attempts=5)  # always the whole 8×4 image
    random.seed(5)
    assert ReferenceErasing(1.0, **whole).rectangle(image) is None  # the reference: strictly inside only
    assert ReferenceErasing(1.0, **whole, whole_side=True).rectangle(image) == (0, 0, 8, 4)


def test_the_default_aspect_range_is_the_reference_inverse():
    from uda_reid.data.transforms import erasing_rule

    assert erasing_rule(DataConfig()).aspect == (0.3, 1 / 0.3) and not erasing_rule(DataConfig()).whole_side
