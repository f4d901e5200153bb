"""Several processes, one run: torchrun / DDP on CPUs with gloo.

The end-to-end tests start ``torchrun --nproc_per_node=2 -m uda_reid.cli`` on a recipe with
``adapt.bn_groups: 2`` (BatchNorm statistics over two halves of the global batch: each process
normalises its own half) and compare it with one process running the same recipe. They agree up to float rounding, not bit for bit: convolutions on 8 images
instead of 16 and the gradient all-reduce add in another order (in float64 a step of the two agrees
to 1e-9). Measured here: first-step gradients within 1.1e-6, losses of the epoch within 1e-5.

Rounding-level differences in the weights can cross a ReLU kink or a max-pool near-tie, which on
these 32×16 images of two flat colours moves the next gradient by up to percents, and the more the
larger the step. And BatchNorm over a slice of 8 near-identical images is ill-conditioned in float32:
for SpCL's second step one rank's float32 gradient is 1.5 % away from the float64 one at the very
same weights (DDP's local gradient equals that float32 computation done offline within 4e-7).
Hence: no augmentation (the processes' random streams differ from the single one's), one epoch of
two steps, SGD with a small learning rate, and weight tolerances set from these measurements.
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from tiny_reid_data import metrics_rows, tiny_adapt_config, write_two_domains

from uda_reid.config import RunConfig, apply_overrides, save_config
from uda_reid.data.datasets import load_dataset
from uda_reid.data.samplers import IdentitySampler, PassSampler
from uda_reid.models.checkpoints import load_checkpoint
from uda_reid.distributed import (
    DistributedContext,
    RankMismatchError,
    bn_groups_per_process,
    distributed_session,
    init_distributed,
)
from uda_reid.engine.epoch_records import load_epoch_records
from uda_reid.models.features import extract_features
from uda_reid.distributed import check_batch_split
from uda_reid.engine.loop import adapt
from uda_reid.engine.seeding import rank_rng_states
from uda_reid.models.normalization import with_resolved_normalization
from uda_reid.engine.seeding import seed_everything
from uda_reid.errors import ConfigError
from uda_reid.models.factory import build_model

# No augmentation: the random streams of two processes differ from one process's stream.
SAME_IMAGES = {"data.flip_prob": 0.0, "data.pad": 0, "data.random_erasing_prob": 0.0, "adapt.epochs": 1}
TWO_HALVES = {"adapt.bn_groups": 2}  # BatchNorm over the two halves of the global batch


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_two_domains(tmp_path_factory.mktemp("data"))


# --------------------------------------------------------------------------- batches and shares
def test_each_process_gets_its_slice_of_the_same_global_batches_in_whole_identities():
    labels = np.repeat(np.arange(10), 5)
    cameras = np.tile(np.arange(5), 10)
    options = dict(cameras=cameras, batch_size=16, num_instances=4, num_batches=6, seed=3)
    whole = IdentitySampler(labels, **options)
    halves = [IdentitySampler(labels, **options, num_replicas=2, rank=rank) for rank in (0, 1)]
    for sampler in (whole, *halves):
        sampler.set_epoch(2)
    batches = np.array(list(whole)).reshape(6, 16)
    slices = [np.array(list(half)).reshape(6, 8) for half in halves]
    assert len(halves[0]) == len(halves[1]) == len(whole) // 2
    np.testing.assert_array_equal(np.concatenate(slices, axis=1), batches)
    for piece in slices:  # two identities of four images in each slice
        groups = labels[piece].reshape(6, 2, 4)
        assert (groups == groups[..., :1]).all()


def test_each_process_gets_an_equal_share_of_the_same_pass_sampler_batches():
    # Clusters of uneven sizes and singletons: a batch holds a varying number of identities, so
    # the processes split it by images.
    labels = np.concatenate([np.repeat(np.arange(6), [7, 5, 3, 2, 6, 4]), np.arange(6, 20)])
    cameras = np.arange(len(labels)) % 3
    options = dict(rule="multi_gallery", cameras=cameras, batch_size=12, num_instances=4, num_batches=7, seed=5)
    whole = PassSampler(labels, **options)
    shares = [PassSampler(labels, **options, num_replicas=3, rank=rank) for rank in range(3)]
    for sampler in (whole, *shares):
        sampler.set_epoch(4)
    batches = np.array(list(whole)).reshape(7, 12)
    pieces = [np.array(list(share)).reshape(7, 4) for share in shares]
    assert all(len(share) == len(whole) // 3 for share in shares)
    np.testing.assert_array_equal(np.concatenate(pieces, axis=1), batches)


def test_batches_that_cannot_be_split_between_the_processes_are_refused():
    with pytest.raises(ConfigError, match=r"data.batch_size \(16\) must be a multiple of data.num_instances \(4\) × the number of processes \(3\) = 12"):
        IdentitySampler(np.repeat(np.arange(8), 4), batch_size=16, num_instances=4, num_batches=1, num_replicas=3, rank=0)
    with pytest.raises(ConfigError, match=r"data.batch_size \(16\) must be a multiple of the number of processes \(3\)"):
        PassSampler(np.repeat(np.arange(8), 4), rule="multi_gallery", batch_size=16, num_instances=4, num_batches=1,
                    num_replicas=3, rank=0)
    config = tiny_adapt_config()
    with pytest.raises(ConfigError, match=r"data.batch_size \(16\) must be a positive multiple of the number of processes \(3\)"):
        check_batch_split(config, 3)
    check_batch_split(apply_overrides(config, {"adapt.bn_groups": 8}), 8)  # two images of every batch per process
    with pytest.raises(ConfigError, match=r"adapt.bn_groups \(32\) must divide data.batch_size \(16\)"):
        check_batch_split(apply_overrides(config, {"adapt.bn_groups": 32}), 2)
    with pytest.raises(ConfigError, match="adapt.sync_bn .* and adapt.bn_groups"):
        check_batch_split(apply_overrides(config, {"adapt.bn_groups": 2, "adapt.sync_bn": True}), 1)
    check_batch_split(apply_overrides(config, {"adapt.bn_groups": 4}), 2)  # two groups of 4 images per process


def test_bn_groups_count_groups_of_the_global_batch_whatever_the_number_of_processes():
    assert [bn_groups_per_process(4, world) for world in (1, 2, 4)] == [4, 2, 1]
    assert bn_groups_per_process(1, 1, sync_bn=True) == 1 and bn_groups_per_process(1, 4, sync_bn=True) == 1
    # Whole-batch statistics (bn_groups 1) on several processes need SyncBatchNorm: both ways out are named.
    with pytest.raises(ConfigError, match=r"adapt.bn_groups is 1: .* each of the 2 processes normalises its own slice.*"
                                          r"--set adapt.bn_groups=2 .* --set adapt.sync_bn=true"):
        bn_groups_per_process(1, 2)
    with pytest.raises(ConfigError, match=r"train.bn_groups is 6: .* must be a multiple of 4"):
        bn_groups_per_process(6, 4, section="train")


def test_shares_cover_the_samples_in_order_and_differ_by_at_most_one():
    for world in (1, 2, 3, 4):
        for count in range(9):
            shares = [range(count)[DistributedContext(rank=r, world_size=world).shard(count)] for r in range(world)]
            assert [i for share in shares for i in share] == list(range(count))
            assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_one_process_has_a_trivial_context_whose_collectives_return_their_input(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    dist = init_distributed("cpu")
    assert (dist.rank, dist.world_size, dist.is_main, dist.is_distributed, dist.backend) == (0, 1, True, False, "")
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    mean = dist.mean(values)
    mean += 1  # a copy: the input stays as it was
    assert torch.equal(values, torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert torch.equal(dist.gather_rows(values), values) and torch.equal(dist.gather_batch(values), values)
    model = torch.nn.Linear(2, 2)
    assert dist.wrap_model(model, sync_bn=True) is model  # one process: BN statistics are the batch's anyway
    assert dist.on_main(sum, [1, 2]) == 3


def test_each_rank_resumes_its_own_random_state_when_the_number_of_processes_is_the_same():
    state = {"rng": [{"torch": torch.zeros(1)}, {"torch": torch.ones(1)}]}
    assert [float(s["torch"]) for s in rank_rng_states(state, 2)] == [0.0, 1.0]
    assert rank_rng_states(state, 4) is None  # another number of processes: streams are re-seeded


# --------------------------------------------------------------------------- collectives, 2 processes
def _free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


def _collectives_worker(rank: int, port: int, data_root: str) -> None:
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    with distributed_session("cpu") as dist:
        assert (dist.rank, dist.world_size, dist.local_rank, dist.backend) == (rank, 2, rank, "gloo")

        # Rows of unequal counts, one rank possibly without any (and then without a trailing shape).
        rows = [torch.tensor([[0.0, 1.0], [2.0, 3.0]]), torch.arange(10.0, 16.0).reshape(3, 2)]
        assert torch.equal(dist.gather_rows(rows[rank]), torch.cat(rows))
        assert torch.equal(dist.gather_rows(rows[0] if rank == 0 else torch.empty(0, 0)), rows[0])

        # Differentiable gather: a batch-coupled loss computed on the gathered batch by every rank;
        # each rank's slice gets the sum of both ranks' gradients = 2 × the single-process gradient.
        slices = [torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]]), torch.tensor([[-2.0, 1.0, 0.25], [0.0, 3.0, 1.0]])]
        weights = torch.arange(12.0).reshape(4, 3) / 7

        def coupled(batch):
            return (batch.softmax(dim=0) * weights).sum() + batch.pow(2).sum(dim=0).sqrt().sum()

        mine = slices[rank].clone().requires_grad_(True)
        coupled(dist.gather_batch(mine)).backward()
        reference = torch.cat(slices).requires_grad_(True)
        coupled(reference).backward()
        torch.testing.assert_close(mine.grad, 2 * reference.grad[2 * rank : 2 * rank + 2])

        # Gradients of parameters outside DDP: the mean over ranks; a missing gradient counts as zero.
        shared, unused = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
        shared.grad = torch.tensor([1.0, 2.0, 3.0]) if rank == 0 else None
        dist.average_gradients([shared, unused])
        assert torch.equal(shared.grad, torch.tensor([0.5, 1.0, 1.5])) and unused.grad is None

        # Rank 0's objects and buffers reach every rank; rank 0's work and its errors too.
        assert dist.broadcast_object({"rank": rank}) == {"rank": 0}
        norm = torch.nn.BatchNorm1d(2)
        norm.running_mean.fill_(rank + 1.0)
        dist.sync_buffers_from_main(norm)
        assert torch.equal(norm.running_mean, torch.ones(2))
        assert dist.on_main(lambda: rank) == 0

        def refuse():
            raise ConfigError("clustering.eps: expected a positive number, got -1")

        with pytest.raises(ConfigError, match="clustering.eps: expected a positive number"):
            dist.on_main(refuse)

        # Identical state passes the check (same checksum everywhere); different state fails on every rank.
        checksum = dist.check_identical("labels", np.arange(5), torch.ones(3))
        assert dist.all_gather_object(checksum) == [checksum, checksum]
        with pytest.raises(RankMismatchError, match=r"labels differ between the processes \(rank 0: \w+, rank 1: \w+\)"):
            dist.check_identical("labels", np.arange(5) + rank)

        # Sharded extraction (3 + 2 images) gathers what one process extracts from all five.
        config, _ = with_resolved_normalization(tiny_adapt_config())
        seed_everything(0)
        model, _ = build_model(config.model)
        samples = load_dataset("dukemtmc", data_root).train[:5]
        torch.testing.assert_close(extract_features(model, samples, config.data, progress=False, dist=dist),
                                   extract_features(model, samples, config.data, progress=False), rtol=1e-4, atol=1e-5)


def test_collectives_across_two_processes(data_root):
    mp.spawn(_collectives_worker, args=(_free_port(), str(data_root)), nprocs=2, join=True)


# --------------------------------------------------------------------------- runs: torchrun vs one process
def _torchrun(*arguments: str) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "uda_reid.cli", *arguments, "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"


def _initial_weights(config: RunConfig) -> dict[str, torch.Tensor]:
    """The plain model every run starts from (the loop seeds, then builds)."""
    seed_everything(config.seed)
    return build_model(config.model, image_size=(config.data.height, config.data.width))[0].state_dict()


def _assert_same_run(multi, single, config: RunConfig, *, weight_tolerance: float) -> None:
    """Rows, pseudo-labels and weights of a 2-process run against the 1-process run.

    The trained weights must differ by less than ``weight_tolerance`` × how far they moved in the
    epoch, BN's running statistics (rank 0's = group 0's) by less than 1e-3 × that.
    """
    multi_rows, single_rows = metrics_rows(multi), metrics_rows(single)
    assert [r["epoch"] for r in multi_rows] == [r["epoch"] for r in single_rows] == [0, 1]
    for got, expected in zip(multi_rows, single_rows):
        assert set(got) == set(expected)
        for key, value in expected.items():
            if key.endswith("seconds"):
                continue
            if key.startswith(("loss", "gds_")):
                assert got[key] == pytest.approx(value, rel=1e-4), key
            elif key in ("mAP", "rank1", "rank5", "rank10"):
                assert got[key] == pytest.approx(value, abs=1e-3), key
            else:  # counts: clusters, outliers, iterations, proxies...
                assert got[key] == value, key
    for got, expected in zip(load_epoch_records(multi).values(), load_epoch_records(single).values()):
        np.testing.assert_array_equal(got["cluster_labels"], expected["cluster_labels"])
        np.testing.assert_array_equal(got["training_labels"], expected["training_labels"])
    # The two updates of the epoch moved the weights, and BN's running statistics (rank 0's = group
    # 0's), alike: their difference is ≪ how far they moved.
    start = _initial_weights(config)
    got, expected = load_checkpoint(multi / "last.pt")["model"], load_checkpoint(single / "last.pt")["model"]
    trained = [k for k in expected if expected[k].is_floating_point() and "running_" not in k]
    statistics = [k for k in expected if "running_" in k]
    for keys, tolerance in ((trained, weight_tolerance), (statistics, 1e-3)):
        moved = torch.cat([(expected[k] - start[k]).flatten() for k in keys]).norm()
        apart = torch.cat([(got[k] - expected[k]).flatten() for k in keys]).norm()
        assert moved > 0.1 and apart < tolerance * moved, (keys[0], float(apart), float(moved))
    assert "pseudo-labels identical on all 2 processes" in (multi / "log.txt").read_text()
    # Only rank 0 wrote, and what it wrote is what a single process writes.
    assert sorted(p.name for p in multi.iterdir()) == sorted(p.name for p in single.iterdir())


def _sgd(config: RunConfig) -> RunConfig:
    # Adam's first steps are ±lr for every weight whatever the gradient's size; where a gradient
    # is ~0, rounding flips that sign. SGD keeps rounding-sized differences rounding-sized.
    return apply_overrides(config, {"optim.optimizer": "sgd", "optim.lr": 0.001})


@pytest.mark.slow
def test_two_process_usl_equals_one_process_and_resumes(tmp_path, data_root):
    """USL with the clustering baseline, GDS and CAP proxies: every loss that couples a batch's
    samples (GDS statistics, per-camera means, proxy updates) sees the gathered batch, and the
    classifier (a per-epoch head outside DDP) gets its gradients averaged.

    The batch-hard triplet is left out of the weight comparison: at random initialisation the tiny
    images' distances nearly tie, and rounding (one process or two) picks another hardest pair, a
    different but equally valid gradient (measured: 7e-3 of the step with it, 1.1e-5 without)."""
    config = _sgd(tiny_adapt_config(target="dukemtmc", dataset="dukemtmc", **SAME_IMAGES, **TWO_HALVES, **{
        "adapt.method": "baseline", "gds.enabled": True, "camera_proxies.mode": "cap",
        "method_options": {"triplet_loss_weight": 0.0}}))
    recipe = tmp_path / "recipe.yaml"
    save_config(config, recipe)
    _torchrun("usl", "--dataset", "dukemtmc", "--method", "baseline", "--recipe", str(recipe),
              "--data-root", str(data_root), "--out", str(tmp_path / "two"))
    adapt(config, tmp_path / "one", data_root=data_root, progress=False)  # the same recipe, one process
    _assert_same_run(tmp_path / "two", tmp_path / "one", config, weight_tolerance=1e-3)  # measured 1.1e-5
    assert metrics_rows(tmp_path / "two")[1]["camera_proxies"] > 0 and "loss_gds" in metrics_rows(tmp_path / "two")[1]

    # --resume across ranks: both ranks load last.pt and their own random state, and go on.
    saved = load_checkpoint(tmp_path / "two" / "last.pt")["train_state"]
    assert len(saved["rng"]) == 2 and not torch.equal(saved["rng"][0]["torch"], saved["rng"][1]["torch"])
    for name in ("resumed", "resumed_alone"):
        shutil.copytree(tmp_path / "two", tmp_path / name)
    _torchrun("usl", "--dataset", "dukemtmc", "--method", "baseline", "--recipe", str(recipe), "--epochs", "2",
              "--data-root", str(data_root), "--out", str(tmp_path / "resumed"), "--resume")
    rows = metrics_rows(tmp_path / "resumed")
    assert [r["epoch"] for r in rows] == [0, 1, 2] and rows[:2] == metrics_rows(tmp_path / "two")
    log = (tmp_path / "resumed" / "log.txt").read_text()
    assert "epoch 2: pseudo-labels identical on all 2 processes" in log and "re-seeded" not in log
    assert json.loads((tmp_path / "resumed" / "summary.json").read_text())["last"]["mAP"] == rows[2]["mAP"]
    # The recipe, not the hardware, sets the training: the 2-process run resumes on one process too.
    adapt(apply_overrides(config, {"adapt.epochs": 2}), tmp_path / "resumed_alone", data_root=data_root,
          progress=False, resume=True)
    alone = metrics_rows(tmp_path / "resumed_alone")
    assert [r["epoch"] for r in alone] == [0, 1, 2] and alone[2]["clusters"] == rows[2]["clusters"]
    assert "written by 2 process(es), this run has 1: same training, but the random streams" in \
        (tmp_path / "resumed_alone" / "log.txt").read_text()


@pytest.mark.slow
def test_two_process_spcl_uda_equals_one_process(tmp_path, data_root):
    """SpCL UDA: two forward passes (source, then target, each with its own BN copies) before one
    backward under DDP, and a hybrid memory updated with the gathered batches on every rank."""
    # Pairs (K = 2) instead of fours: slices of four identities are better conditioned (SpCL's
    # memory loss needs no positives in the batch).
    config = _sgd(tiny_adapt_config(source="market1501", target="dukemtmc", dataset="dukemtmc",
                                    **SAME_IMAGES, **TWO_HALVES, **{"data.num_instances": 2}))
    recipe = tmp_path / "recipe.yaml"
    save_config(config, recipe)
    _torchrun("adapt", "--source", "market1501", "--target", "dukemtmc", "--recipe", str(recipe),
              "--data-root", str(data_root), "--out", str(tmp_path / "two"))
    adapt(config, tmp_path / "one", data_root=data_root, progress=False)  # the same recipe, one process
    _assert_same_run(tmp_path / "two", tmp_path / "one", config, weight_tolerance=1e-2)  # measured 1.5e-3
    row = metrics_rows(tmp_path / "two")[1]
    assert row["loss_source"] > 0 and row["loss_target"] > 0
    memory = [load_checkpoint(tmp_path / run / "last.pt")["train_state"]["method"]["memory"]["features"] for run in ("two", "one")]
    torch.testing.assert_close(memory[0], memory[1], rtol=0, atol=1e-4)


@pytest.mark.slow
def test_two_process_cluster_contrast_on_the_lup_transformer_equals_one_process(tmp_path, data_root):
    """TransReID-SSL's setting: cluster-contrast (hardest-instance memory update) on the ICS
    ViT, whose BatchNorm lives in its convolution stem (bn_groups act there) and in the neck."""
    config = _sgd(tiny_adapt_config(target="dukemtmc", dataset="dukemtmc", **SAME_IMAGES, **TWO_HALVES, **{
        "adapt.method": "cluster_contrast", "model.arch": "vit_small_ics", "model.pooling": "token",
        "method_options": {"hard_update": True, "momentum": 0.2}}))
    recipe = tmp_path / "recipe.yaml"
    save_config(config, recipe)
    _torchrun("usl", "--dataset", "dukemtmc", "--method", "cluster_contrast", "--recipe", str(recipe),
              "--data-root", str(data_root), "--out", str(tmp_path / "two"))
    adapt(config, tmp_path / "one", data_root=data_root, progress=False)
    _assert_same_run(tmp_path / "two", tmp_path / "one", config, weight_tolerance=1e-3)
