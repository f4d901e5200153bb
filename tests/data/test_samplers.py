import numpy as np
import pytest

from uda_reid.data.samplers import IdentitySampler, PassSampler
from uda_reid.errors import ConfigError, UnknownNameError


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


# ---------------------------------------------------------------------------------------------
# PassSampler: the reference methods' loaders


def _clusters_and_singletons():
    """Five clusters (sizes 6, 5, 4, 3, 2; cameras cycling 0..2) then 30 un-clustered instances, each
    its own label; 4 outliers (-1) that must never be drawn."""
    sizes = [6, 5, 4, 3, 2]
    labels = np.concatenate([np.repeat(np.arange(5), sizes), np.arange(5, 35), [-1] * 4])
    cameras = np.arange(len(labels)) % 3
    return labels, cameras


def test_multi_gallery_gives_an_instance_one_slot_and_a_cluster_k_images_per_pass():
    labels, cameras = _clusters_and_singletons()
    # One pass is 5 clusters × 4 + 30 instances × 1 = 50 images: five batches of 10 are exactly one pass.
    sampler = PassSampler(labels, rule="multi_gallery", cameras=cameras, batch_size=10, num_instances=4,
                          num_batches=5, seed=7)
    drawn = np.array(list(sampler))
    assert len(drawn) == 50 and (labels[drawn] >= 0).all()
    counts = np.bincount(labels[drawn], minlength=35)
    assert (counts[:5] == 4).all() and (counts[5:] == 1).all()
    assert np.isclose((labels[drawn] < 5).mean(), 20 / 50)  # the share of clustered images
    # The old P×K sampler gave every instance K slots: far fewer clustered images per batch.
    old = IdentitySampler(labels, cameras=cameras, batch_size=12, num_instances=4, num_batches=40, seed=7)
    assert (labels[np.array(list(old))] < 5).mean() < 0.25


def test_multi_gallery_draws_the_other_instances_from_other_cameras_first():
    # identity 0: one image in camera 0, six in camera 1; identity 1: four images, all camera 2
    labels = np.array([0] * 7 + [1] * 4)
    cameras = np.array([0, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2])
    sampler = PassSampler(labels, rule="multi_gallery", cameras=cameras, batch_size=8, num_instances=4,
                          num_batches=200, seed=0)
    for batch in np.array(list(sampler)).reshape(-1, 8):
        for start in (0, 4):  # each identity contributes a run of four: anchor first
            anchor, others = batch[start], batch[start + 1 : start + 4]
            assert (labels[others] == labels[anchor]).all()
            if labels[anchor] == 0 and cameras[anchor] == 0:
                # six other-camera images >= K: three distinct ones
                assert (cameras[others] == 1).all() and len(set(others)) == 3
            elif labels[anchor] == 0:
                assert (others == 0).all()  # the only image of another camera, drawn with replacement
            else:
                assert anchor not in others  # no other camera: the identity's other images


def test_proxy_balanced_batches_hold_four_images_of_each_camera_proxy():
    labels = np.array([0] * 6 + [1] * 5 + [2] * 2 + [-1] * 3)
    cameras = np.array([0, 0, 0, 0, 1, 1, 0, 1, 2, 2, 2, 0, 1, 0, 1, 2])
    proxies = {(int(l), int(c)) for l, c in zip(labels, cameras) if l >= 0}
    sampler = PassSampler(labels, rule="proxy_balanced", cameras=cameras, batch_size=8, num_instances=4,
                          num_batches=30, seed=1)
    drawn = np.array(list(sampler))
    assert (labels[drawn] >= 0).all()
    for batch in drawn.reshape(-1, 8):
        keys = [(int(labels[i]), int(cameras[i])) for i in batch]
        assert keys[:4] == [keys[0]] * 4 and keys[4:] == [keys[4]] * 4 and keys[0] != keys[4]
        assert {keys[0], keys[4]} <= proxies
        for run in (batch[:4], batch[4:]):  # a proxy of at least four images gives four distinct ones
            members = np.flatnonzero((labels == labels[run[0]]) & (cameras == cameras[run[0]]))
            if len(members) >= 4:
                assert len(set(run)) == 4


def test_random_identity_takes_k_images_of_each_identity():
    labels = np.array([0] * 6 + [1] * 2)
    sampler = PassSampler(labels, rule="random_identity", batch_size=8, num_instances=4, num_batches=10, seed=2)
    for batch in np.array(list(sampler)).reshape(-1, 8):
        runs = [batch[:4], batch[4:]]
        assert sorted(int(labels[run[0]]) for run in runs) == [0, 1]
        for run in runs:
            assert (labels[run] == labels[run[0]]).all()
            if labels[run[0]] == 0:
                assert len(set(run)) == 4


def test_pass_sampler_draws_repeat_per_epoch_and_differ_between_epochs():
    labels, cameras = _clusters_and_singletons()
    options = dict(rule="multi_gallery", cameras=cameras, batch_size=10, num_instances=4, num_batches=12, seed=3)
    a, b = PassSampler(labels, **options), PassSampler(labels, **options)
    a.set_epoch(5)
    b.set_epoch(5)
    assert list(a) == list(b) and len(list(a)) == 120  # several passes, each tail shorter than a batch dropped
    b.set_epoch(6)
    assert list(a) != list(b)


def test_pass_sampler_bad_input_is_named():
    with pytest.raises(UnknownNameError, match="unknown batch sampler 'pk' for adapt.sampler; known: every_image, multi_gallery"):
        PassSampler([0, 0], rule="pk", batch_size=2, num_instances=2, num_batches=1)
    with pytest.raises(ConfigError, match="all labels are -1"):
        PassSampler([-1, -1], rule="multi_gallery", batch_size=2, num_instances=2, num_batches=1)


def test_passes_shorter_than_a_batch_are_joined():
    # One cluster of three images gives four per pass; a batch of 10 takes parts of three passes.
    sampler = PassSampler([0, 0, 0], rule="multi_gallery", batch_size=10, num_instances=4, num_batches=2, seed=0)
    drawn = list(sampler)
    assert len(drawn) == 20 and set(drawn) <= {0, 1, 2}
