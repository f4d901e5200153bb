"""MoCo and UP-ReID plug-ins: patch partition and pairing, EMA, shuffled keys, queues, and the losses they feed.

They are driven here hook by hook as the training loop drives them (build_model, setup, training_step),
on a model whose BatchNorm is grouped as the loop groups it.
"""

import pytest
import torch

from uda_reid.config import RunConfig, apply_overrides
from uda_reid.errors import ConfigError
from uda_reid.methods import AdaptContext
from uda_reid.models.batchnorm import convert_to_grouped_bn
from uda_reid.models.projection_encoder import cut_patches, mirrored_patch
from uda_reid.pretraining import PRETRAINERS
from uda_reid.pretraining import moco as moco_module
from uda_reid.pretraining import upreid as upreid_module

TINY = {"model.arch": "resnet18", "pretrain.queue_size": 16, "pretrain.dim": 8, "pretrain.bn_groups": 2,
        "pretrain.key_momentum": 0.9}


def plug_in(name: str = "moco"):
    """(the method, its context) after ``setup``, as the loop leaves them before the first step."""
    config = apply_overrides(RunConfig(), {**TINY, "pretrain.method": name})
    method = PRETRAINERS.get(name)(config)
    model, _ = method.build_model(config.model, 0, None)
    model = convert_to_grouped_bn(model, config.pretrain.bn_groups)
    ctx = AdaptContext(config=config, model=model, device=torch.device("cpu"), target_samples=[], source_samples=None,
                       num_source_classes=0)
    method.setup(ctx)
    return method, ctx


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



def batch(images: dict) -> dict:
    """A training batch as the loader gives it (``image`` holds the views)."""
    return {"target": {"image": images, "label": torch.arange(len(images["query"]))}}


def test_key_encoder_follows_the_query_encoder_by_ema_and_gets_no_gradient():
    torch.manual_seed(0)
    moco, ctx = plug_in("moco")
    with torch.no_grad():
        for parameter in ctx.model.parameters():
            parameter.add_(0.5)
    before_q = [p.detach().clone() for p in ctx.model.parameters()]
    before_k = [p.detach().clone() for p in moco.keys.encoder_k.parameters()]
    moco.update_key_encoder(ctx.model)
    for q, k0, k1 in zip(before_q, before_k, moco.keys.encoder_k.parameters()):
        torch.testing.assert_close(k1, 0.9 * k0 + 0.1 * q)
    step = moco.training_step(ctx, batch(views()))
    sum(step.losses.values()).backward()
    assert all(p.grad is None for p in moco.keys.encoder_k.parameters())
    assert all(p.grad is not None for p in ctx.model.parameters() if p.requires_grad)


def test_shuffled_keys_come_back_in_image_order():
    torch.manual_seed(0)
    moco, _ = plug_in("moco")
    moco.keys.eval()  # eval: statistics independent of the shuffle
    images = torch.randn(6, 3, 32, 16)
    torch.testing.assert_close(moco.encode_keys(images), moco.keys.encoder_k(images))


def test_moco_step_enqueues_its_keys_after_using_the_old_queue(monkeypatch):
    torch.manual_seed(0)
    moco, ctx = plug_in("moco")
    queue = moco.keys.queue
    old = queue.keys.clone()
    seen = {}
    real_nce = moco_module.info_nce

    def recording_nce(query, key, negatives, temperature):
        seen["negatives"] = negatives.clone()
        return real_nce(query, key, negatives, temperature)

    monkeypatch.setattr(moco_module, "info_nce", recording_nce)
    original = queue.enqueue
    monkeypatch.setattr(queue, "enqueue", lambda keys: (seen.setdefault("keys", keys), original(keys)))
    step = moco.training_step(ctx, batch(views()))
    assert set(step.losses) == {"loss_global_nce"} and torch.isfinite(step.losses["loss_global_nce"])
    torch.testing.assert_close(seen["negatives"], old)  # the loss saw the queue before this step's keys
    assert int(queue.pointer) == 4
    torch.testing.assert_close(queue.keys[:4], seen["keys"])
    torch.testing.assert_close(queue.keys[4:], old[4:])


def test_upreid_pairs_each_query_patch_with_the_same_and_the_mirrored_key_patch(monkeypatch):
    torch.manual_seed(0)
    model, ctx = plug_in("upreid")
    calls = []
    real = upreid_module.multi_positive_info_nce

    def recording(query, positives, queue, temperature):
        calls.append((query.detach(), positives.detach(), queue.clone()))
        return real(query, positives, queue, temperature)

    monkeypatch.setattr(upreid_module, "multi_positive_info_nce", recording)
    key_patches = {}
    real_projections = model.patch_projections

    def remember(images, encoder):
        result = real_projections(images, encoder)
        key_patches["key" if encoder == model.encode_keys else "query"] = result.detach()
        return result

    monkeypatch.setattr(model, "patch_projections", remember)
    patch_queues = [q.keys.clone() for q in model.keys.patch_queues]
    step = model.training_step(ctx, batch(views(original=True)))
    assert len(calls) == 8 and set(step.losses) == {"loss_global_nce", "loss_patch_nce", "loss_consistency"}
    for i, (query, positives, queue) in enumerate(calls):
        torch.testing.assert_close(query, key_patches["query"][:, i])
        torch.testing.assert_close(positives[:, 0], key_patches["key"][:, mirrored_patch(i)])
        torch.testing.assert_close(positives[:, 1], key_patches["key"][:, i])
        torch.testing.assert_close(queue, patch_queues[i])  # patch position i's own queue
        torch.testing.assert_close(model.keys.patch_queues[i].keys[:4], key_patches["key"][:, i])  # then enqueued
    patch_mean = torch.stack([real(*call, 0.1) for call in calls]).mean()
    torch.testing.assert_close(step.losses["loss_patch_nce"].detach(), 0.2 * patch_mean)  # λp applied
    sum(step.losses.values()).backward()
    assert all(p.grad is None for p in model.keys.encoder_k.parameters())


def test_an_unknown_mmd_estimator_is_named_before_any_work():
    with pytest.raises(ConfigError, match="pretrain.mmd"):
        apply_overrides(RunConfig(), {"pretrain.mmd": "cubic"}, "--set")
