"""CAP and cluster-contrast as methods of the cluster -> adapt loop: their losses and updates against
independent computations, and runs on tiny data."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from uda_reid.clustering import ClusterResult
from uda_reid.data.layouts import Sample
from uda_reid.engine.loop import adapt
from uda_reid.memory import CameraProxies
from uda_reid.methods import AdaptContext, build_method
from uda_reid.models.reid_model import ReidOutput
from tiny_reid_data import assert_resume_reaches_the_uninterrupted_run, tiny_adapt_config, write_two_domains


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_two_domains(tmp_path_factory.mktemp("data"))


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


class LinearNet(nn.Module):
    """A stand-in network: the training forward returns the features of a linear map."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, images: torch.Tensor) -> ReidOutput:
        features = self.linear(images)
        return ReidOutput(pooled=features, features=features, logits=None)


def _toy(method: str, **options):
    """A method on 12 samples: 3 clusters seen by 2 cameras, 2 outliers; a batch of 8 of them."""
    torch.manual_seed(0)
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2, -1, -1])
    cameras = np.array([0, 1, 0, 1, 0, 1, 0, 0, 1, 1, 0, 1])
    samples = [Sample(f"{i}.jpg", -1, int(c)) for i, c in enumerate(cameras)]
    config = tiny_adapt_config(target="dukemtmc", **{"adapt.method": method, "method_options": options})
    model = LinearNet(5, 6)
    ctx = AdaptContext(config=config, model=model, device=torch.device("cpu"), target_samples=samples,
                       source_samples=None, num_source_classes=0, progress=False)
    method_object = build_method(config)
    features = F.normalize(torch.randn(12, 6), dim=1)
    result = ClusterResult(labels=labels, num_clusters=3, num_outliers=2)
    figures = method_object.on_clusters(result, features, ctx).figures
    index = torch.tensor([0, 1, 3, 4, 6, 7, 8, 9])
    batch = {"target": {"image": torch.randn(8, 5), "label": torch.from_numpy(labels[index.numpy()]),
                        "camid": torch.from_numpy(cameras[index.numpy()]), "index": index}}
    return method_object, ctx, features, labels, cameras, batch, figures


@pytest.mark.parametrize("epoch", [0, 5])
def test_cap_loss_is_intra_camera_then_plus_half_inter_camera_and_proxies_follow_the_batch(epoch):
    cap, ctx, features, labels, cameras, batch, figures = _toy("cap")
    ctx.epoch = epoch
    assert figures["camera_proxies"] == 6  # every cluster in both cameras
    bank = CameraProxies(6).build(features, labels, cameras)  # the same proxies, built independently
    step = cap.training_step(ctx, batch)
    out = ctx.model(batch["target"]["image"]).features
    batch_labels, batch_cameras = batch["target"]["label"], batch["target"]["camid"]
    expected = bank.intra_camera_loss(out, batch_labels, batch_cameras, temperature=0.07)
    if epoch >= 5:
        expected = expected + 0.5 * bank.inter_camera_loss_cap(out, batch_labels, batch_cameras, num_hard_negatives=50,
                                                               temperature=0.07)
    assert set(step.losses) == {"loss_cap"}
    torch.testing.assert_close(step.losses["loss_cap"], expected)
    step.losses["loss_cap"].backward()
    cap.after_step(ctx)
    bank.momentum_update(out.detach(), batch_labels, batch_cameras, momentum=0.2)
    torch.testing.assert_close(cap.proxies.banks[0].proxies, bank.proxies)


def test_cluster_contrast_memory_is_the_cluster_centroids_its_loss_and_momentum_update():
    method, ctx, features, labels, _, batch, _ = _toy("cluster_contrast")
    centroids = torch.stack([F.normalize(features[labels == c].mean(0), dim=0) for c in range(3)])
    torch.testing.assert_close(method.memory.features, centroids)
    step = method.training_step(ctx, batch)
    out = ctx.model(batch["target"]["image"]).features
    targets = batch["target"]["label"]
    expected = F.cross_entropy(F.normalize(out, dim=1) @ centroids.t() / 0.05, targets)
    torch.testing.assert_close(step.losses["loss_cluster"], expected)
    step.losses["loss_cluster"].backward()
    method.after_step(ctx)
    moved = centroids.clone()
    for feature, label in zip(F.normalize(out.detach(), dim=1), targets.tolist()):  # in batch order, m = 0.1
        moved[label] = F.normalize(0.1 * moved[label] + 0.9 * feature, dim=0)
    torch.testing.assert_close(method.memory.features, moved)


def test_cap_run_draws_proxy_balanced_batches_and_logs_its_loss(tmp_path, data_root, monkeypatch):
    from uda_reid.methods.cap import CAP

    seen = []
    original = CAP.training_step

    def recording(self, ctx, batch):
        seen.append((batch["target"]["label"].numpy().copy(), batch["target"]["camid"].numpy().copy()))
        return original(self, ctx, batch)

    monkeypatch.setattr(CAP, "training_step", recording)
    config = tiny_adapt_config(target="dukemtmc", **{"adapt.method": "cap", "adapt.passes_per_epoch": 1.0,
                                                     "method_options": {"inter_start_epoch": 1}})
    adapt(config, tmp_path, data_root=data_root, progress=False)
    logged = rows(tmp_path)
    for row in logged[1:]:
        assert {"loss_cap", "camera_proxies", "clusters"} <= set(row) and np.isfinite(row["loss_cap"])
        # one pass over the clustered images per epoch, as CAP's floor(images / batch)
        assert row["iterations"] == (72 - row["outliers"]) // 16
    for labels, cameras in seen:  # 16 images = 4 camera proxies × 4 images, outliers never drawn
        assert (labels >= 0).all()
        keys = labels * 10 + cameras
        assert all((keys[i : i + 4] == keys[i]).all() for i in range(0, 16, 4))


def test_cluster_contrast_run_with_gem_pooling_resumes_to_the_uninterrupted_result(tmp_path, data_root, monkeypatch):
    config = tiny_adapt_config(target="dukemtmc", **{"adapt.method": "cluster_contrast", "model.pooling": "gem",
                                                     "adapt.epochs": 3})
    assert_resume_reaches_the_uninterrupted_run(config, tmp_path, data_root, monkeypatch)
    logged = rows(tmp_path / "full")
    assert all({"loss_cluster", "clusters", "unclustered"} <= set(row) for row in logged[1:])
