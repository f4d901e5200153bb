"""MoCo and UP-ReID modules: patch partition and pairing, EMA, shuffled keys, queues, and the losses they feed."""

import dataclasses

import pytest
import torch

from uda_reid.config import PretrainConfig
from uda_reid.models.projection_encoder import cut_patches, mirrored_patch
from uda_reid.pretraining import PRETRAINERS
from uda_reid.pretraining import upreid as upreid_module

TINY = PretrainConfig(queue_size=16, dim=8, bn_groups=2, key_momentum=0.9)


def test_patches_are_four_stripes_of_two_halves_in_reading_order():
    images = torch.arange(2 * 3 * 8 * 4, dtype=torch.float32).reshape(2, 3, 8, 4)
    patches = cut_patches(images, stripes=4, columns=2)
    assert patches.shape == (16, 3, 2, 2)
    for n in range(2):
        for i in range(8):
            stripe, column = divmod(i, 2)
            assert torch.equal(patches[n * 8 + i], images[n, :, 2 * stripe : 2 * stripe + 2, 2 * column : 2 * column + 2])
    with pytest.raises(ValueError, match="do not split into 4×2"):
        cut_patches(torch.zeros(1, 3, 10, 4))


def test_the_mirrored_patch_is_the_other_half_of_the_same_stripe():
    assert [mirrored_patch(i) for i in range(8)] == [1, 0, 3, 2, 5, 4, 7, 6]
    assert [mirrored_patch(i, columns=3) for i in range(3)] == [2, 1, 0]


def views(batch: int = 4, original: bool = False):
    torch.manual_seed(1)
    out = {"query": torch.randn(batch, 3, 32, 16), "key": torch.randn(batch, 3, 32, 16)}
    if original:
        out["original"] = torch.randn(batch, 3, 32, 16)
    return out


def test_key_encoder_follows_the_query_encoder_by_ema_and_gets_no_gradient():
    torch.manual_seed(0)
    moco = PRETRAINERS.get("moco")("resnet18", TINY)
    with torch.no_grad():
        for parameter in moco.encoder_q.parameters():
            parameter.add_(0.5)
    before_q = [p.detach().clone() for p in moco.encoder_q.parameters()]
    before_k = [p.detach().clone() for p in moco.encoder_k.parameters()]
    moco.update_key_encoder()
    for q, k0, k1 in zip(before_q, before_k, moco.encoder_k.parameters()):
        torch.testing.assert_close(k1, 0.9 * k0 + 0.1 * q)
    losses = moco(views())
    losses["loss"].backward()
    assert all(p.grad is None for p in moco.encoder_k.parameters())
    assert all(p.grad is not None for p in moco.encoder_q.parameters() if p.requires_grad)


def test_shuffled_keys_come_back_in_image_order():
    torch.manual_seed(0)
    moco = PRETRAINERS.get("moco")("resnet18", TINY).eval()  # eval: statistics independent of the shuffle
    images = torch.randn(6, 3, 32, 16)
    torch.testing.assert_close(moco.encode_keys(images), moco.encoder_k(images))


def test_moco_step_enqueues_its_keys_after_using_the_old_queue(monkeypatch):
    torch.manual_seed(0)
    moco = PRETRAINERS.get("moco")("resnet18", TINY)
    old = moco.queue.keys.clone()
    seen = {}
    original = moco.queue.enqueue
    monkeypatch.setattr(moco.queue, "enqueue", lambda keys: (seen.setdefault("keys", keys), original(keys)))
    losses = moco(views())
    assert torch.isfinite(losses["loss"]) and int(moco.queue.pointer) == 4
    torch.testing.assert_close(moco.queue.keys[:4], seen["keys"])
    torch.testing.assert_close(moco.queue.keys[4:], old[4:])


def test_upreid_pairs_each_query_patch_with_the_same_and_the_mirrored_key_patch(monkeypatch):
    torch.manual_seed(0)
    options = dataclasses.replace(TINY, method="upreid")
    model = PRETRAINERS.get("upreid")("resnet18", options)
    calls = []
    real = upreid_module.multi_positive_info_nce

    def recording(query, positives, queue, temperature):
        calls.append((query.detach(), positives.detach(), queue.clone()))
        return real(query, positives, queue, temperature)

    monkeypatch.setattr(upreid_module, "multi_positive_info_nce", recording)
    key_patches = {}
    real_projections = model._patch_projections

    def remember(images, encoder):
        result = real_projections(images, encoder)
        key_patches["key" if encoder == model.encode_keys else "query"] = result.detach()
        return result

    monkeypatch.setattr(model, "_patch_projections", remember)
    patch_queues = [q.keys.clone() for q in model.patch_queues]
    losses = model(views(original=True))
    assert len(calls) == 8 and set(losses) == {"loss", "global_nce", "patch_nce", "consistency"}
    for i, (query, positives, queue) in enumerate(calls):
        torch.testing.assert_close(query, key_patches["query"][:, i])
        torch.testing.assert_close(positives[:, 0], key_patches["key"][:, mirrored_patch(i)])
        torch.testing.assert_close(positives[:, 1], key_patches["key"][:, i])
        torch.testing.assert_close(queue, patch_queues[i])  # patch position i's own queue
        torch.testing.assert_close(model.patch_queues[i].keys[:4], key_patches["key"][:, i])  # then enqueued
    expected = 0.8 * losses["global_nce"] + 0.2 * losses["patch_nce"] + losses["consistency"]
    torch.testing.assert_close(losses["loss"].detach(), expected)
    losses["loss"].backward()
    assert all(p.grad is None for p in model.encoder_k.parameters())


def test_an_unknown_mmd_estimator_is_named():
    with pytest.raises(Exception, match="pretrain.mmd: unknown estimator 'cubic'"):
        PRETRAINERS.get("upreid")("resnet18", dataclasses.replace(TINY, mmd="cubic"))
