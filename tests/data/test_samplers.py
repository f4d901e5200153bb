import numpy as np
import pytest

from uda_reid.data.samplers import IdentitySampler
from uda_reid.errors import ConfigError


def _batches(sampler, batch_size):
    indices = list(sampler)
    return [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]


def test_batches_have_p_distinct_identities_with_k_images_each():
    labels = np.repeat(np.arange(10), 6)
    sampler = IdentitySampler(labels, batch_size=16, num_instances=4, num_batches=5, seed=3)
    batches = _batches(sampler, 16)
    assert len(batches) == 5 and len(sampler) == 80
    for batch in batches:
        ids, counts = np.unique(labels[batch], return_counts=True)
        assert len(ids) == 4 and (counts == 4).all()
        assert len(set(batch)) == 16  # enough images per id: no repeats


def test_instances_come_from_distinct_cameras_first():
    labels = np.repeat(np.arange(4), 8)
    cameras = np.tile([0, 0, 0, 0, 0, 1, 2, 3], 4)  # 4 cameras per id, camera 0 dominant
    sampler = IdentitySampler(labels, cameras=cameras, batch_size=8, num_instances=4, num_batches=20, seed=0)
    for batch in _batches(sampler, 8):
        for identity in np.unique(labels[batch]):
            chosen = [i for i in batch if labels[i] == identity]
            assert sorted(cameras[chosen]) == [0, 1, 2, 3]


def test_outliers_are_never_drawn_and_small_ids_are_padded():
    labels = np.array([-1, -1, 0, 1, 1, 1, 1, -1])
    sampler = IdentitySampler(labels, batch_size=8, num_instances=4, num_batches=3)
    drawn = list(sampler)
    assert all(labels[i] >= 0 for i in drawn)
    assert sum(labels[i] == 0 for i in drawn) == 12  # id 0 has one image, drawn 4 times per batch


def test_same_seed_and_epoch_repeat_and_epochs_differ():
    labels = np.repeat(np.arange(20), 4)
    a = IdentitySampler(labels, batch_size=8, num_instances=4, num_batches=4, seed=1)
    b = IdentitySampler(labels, batch_size=8, num_instances=4, num_batches=4, seed=1)
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)


def test_bad_batch_shape_and_all_outliers_are_clear_errors():
    with pytest.raises(ConfigError, match=r"batch_size \(10\) must be a positive multiple of data.num_instances \(4\)"):
        IdentitySampler([0, 1], batch_size=10, num_instances=4, num_batches=1)
    with pytest.raises(ConfigError, match="all labels are -1"):
        IdentitySampler([-1, -1], batch_size=4, num_instances=2, num_batches=1)
