"""Memory is a checked limit: a run whose settings cannot fit is refused with one line naming the
settings, the estimate and the budget, before its first batch (uda_reid.engine.memory_check)."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from tiny_reid_data import write_two_domains
from torch import nn

from uda_reid.cli import cli
from uda_reid.engine import memory_check
from uda_reid.engine.memory_check import (
    MEMORY_LIMIT_ENV, NetworkFootprint, check_needs, jaccard_bytes, network_footprint, parse_size, run_needs)
from uda_reid.errors import ConfigError

TINY = ["device=cpu", "data.height=32", "data.width=16", "data.batch_size=16", "data.workers=0", "data.pad=2",
        "model.arch=resnet18", "optim.warmup_epochs=0", "clustering.k1=6", "clustering.k2=2",
        "clustering.min_samples=2", "adapt.iters_per_epoch=2", "adapt.eval_every=1", "adapt.bn_groups=1"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_two_domains(tmp_path_factory.mktemp("data"))


def usl(data_root, out, *settings: str) -> list[str]:
    merged = {item.split("=")[0]: item for item in [*TINY, *settings]}
    return ["usl", "--dataset", "dukemtmc", "--data-root", str(data_root), "--out", str(out), "--epochs", "1",
            "--quiet", *[a for item in merged.values() for a in ("--set", item)]]


def one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


@pytest.mark.parametrize(("text", "size"), [("8GiB", 8 << 30), ("512 MiB", 512 << 20), ("1.5g", 3 << 29),
                                            ("4096", 4096), ("2kb", 2048)])
def test_sizes_are_read_in_powers_of_1024(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "-1GiB", "0", "3 parsecs"])
def test_a_bad_memory_limit_names_the_variable(text):
    with pytest.raises(ConfigError, match=f"{MEMORY_LIMIT_ENV}="):
        parse_size(text)


def test_the_activation_bytes_are_what_autograd_keeps_per_image():
    # conv keeps its input (3 channels), ReLU its output (8 channels), the linear layer its input.
    network = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(),
                            nn.Linear(8 * 6 * 4, 5))
    footprint = network_footprint(network, 6, 4, torch.device("cpu"))
    assert footprint.training_bytes_per_image == (3 + 8) * 6 * 4 * 4  # flatten is a view of the ReLU output
    assert footprint.parameters == 3 * 8 * 9 + 8 * 6 * 4 * 5 + 5 and footprint.feature_dim == 5
    assert footprint.extraction_bytes_per_image == 3 * 8 * 6 * 4 * 4  # 3 × the largest layer output


def test_measuring_leaves_the_runs_batchnorm_statistics_alone():
    network = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten())
    before = {key: value.clone() for key, value in network.state_dict().items()}
    network_footprint(network, 8, 8, torch.device("cpu"))
    assert all(torch.equal(before[key], value) for key, value in network.state_dict().items())


def test_the_jaccard_stage_grows_with_n_when_cut_at_eps_and_with_n_squared_when_every_pair_is_read():
    cut = [jaccard_bytes(n, 30, 0.6) for n in (100_000, 200_000)]
    every = [jaccard_bytes(n, 30, None) for n in (100_000, 200_000)]
    assert cut[1] - cut[0] < 1.1 * (cut[0] - jaccard_bytes(0, 30, 0.6))  # linear
    assert every[1] > 3.9 * every[0] * 0.99 and every[0] > 100 * cut[0]


def needs(**changes):
    footprint = NetworkFootprint(training_bytes_per_image=20 << 20, extraction_bytes_per_image=2 << 20,
                                 parameters=25_000_000, feature_dim=2048)
    arguments = dict(footprint=footprint, images_per_step=64, step_settings="data.batch_size=64", eval_batch_size=128,
                     optimiser_states=2, weight_copies=0, memory_rows=12936, extracted=12936, clustered=12936,
                     k1=30, max_distance=0.6, clustering_settings="clustering.clusterer=dbscan", query=3368,
                     gallery=15913)
    arguments.update(changes)
    return run_needs(**arguments)


def test_a_paper_setting_fits_sixteen_gib_and_a_larger_batch_is_named(monkeypatch):
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "16GiB")
    check_needs(needs(), torch.device("cpu"))  # Market-size, ResNet-50-like: about 2 GiB at most
    with pytest.raises(ConfigError, match=r"^data.batch_size=1024: a training step needs about 22.\d GiB .*"
                                          r"more than the 16.0 GiB allowed by UDAREID_MEMORY_LIMIT=16GiB"):
        check_needs(needs(images_per_step=1024, step_settings="data.batch_size=1024"), torch.device("cpu"))


def test_every_pair_of_a_large_target_is_refused_naming_the_clusterer(monkeypatch):
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "16GiB")
    large = dict(memory_rows=82_161, extracted=82_161, clustered=82_161)
    check_needs(needs(**large), torch.device("cpu"))  # DBSCAN reads distances up to eps: fits
    with pytest.raises(ConfigError, match=r"^clustering.clusterer=hdbscan: the clustering stage needs about \d+\.\d GiB"
                                          r" .*every pair"):
        check_needs(needs(**large, max_distance=None, clustering_settings="clustering.clusterer=hdbscan"),
                    torch.device("cpu"))


def test_processes_on_one_host_each_hold_their_step(monkeypatch):
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "4GiB")
    two = needs(images_per_step=64, memory_rows=0, clustered=0, query=0, gallery=0)
    check_needs(two, torch.device("cpu"), processes_on_host=1)
    with pytest.raises(ConfigError, match="in each of 4 processes"):
        check_needs(two, torch.device("cpu"), processes_on_host=4)


def test_without_an_override_the_host_budget_is_what_the_machine_has(monkeypatch):
    monkeypatch.delenv(MEMORY_LIMIT_ENV, raising=False)
    size, said = memory_check.budgets(torch.device("cpu"))["host"]
    assert 0 < size < 1 << 50 and said == "available on this machine"


def test_a_run_over_the_budget_is_refused_before_any_work_naming_the_batch(tmp_path, data_root, monkeypatch):
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "20MiB")
    out = tmp_path / "run"
    line = one_error_line(CliRunner().invoke(cli, usl(data_root, out)))
    assert line.startswith("Error: data.batch_size=16, data.height=32, data.width=16: a training step needs about"), line
    assert "allowed by UDAREID_MEMORY_LIMIT=20MiB" in line
    assert not out.exists()  # nothing was written, the folder it made is gone


def test_the_same_run_within_the_budget_trains(tmp_path, data_root, monkeypatch):
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "2GiB")
    result = CliRunner().invoke(cli, usl(data_root, tmp_path / "run"))
    assert result.exit_code == 0, result.output


def test_a_batch_larger_than_the_dataset_is_refused_before_any_work(tmp_path, data_root):
    out = tmp_path / "run"
    line = one_error_line(CliRunner().invoke(cli, usl(data_root, out, "data.batch_size=100000")))
    assert "data.batch_size=100000: more than the" in line and "training images of dukemtmc" in line, line
    assert not out.exists()


@pytest.mark.parametrize("command", ["usl", "train"])
def test_a_batch_of_one_image_is_refused_for_batchnorm(tmp_path, data_root, command):
    args = usl(data_root, tmp_path / "run", "data.batch_size=1", "data.num_instances=1")
    args[0] = command
    if command == "train":
        args[1] = "--dataset"
    line = one_error_line(CliRunner().invoke(cli, args))
    assert "data.batch_size (1) gives BatchNorm fewer than 2 images" in line, line


def test_evaluate_and_extract_check_their_batch_against_the_budget(tmp_path, data_root, monkeypatch):
    trained = tmp_path / "run"
    assert CliRunner().invoke(cli, usl(data_root, trained)).exit_code == 0
    common = ["--weights", str(trained / "best.pt"), "--data-root", str(data_root), "--quiet", "--device", "cpu",
              "--set", "data.eval_batch_size=100000", "--set", "data.height=256", "--set", "data.width=128"]
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "64MiB")
    line = one_error_line(CliRunner().invoke(cli, ["evaluate", "--dataset", "dukemtmc", *common]))
    assert "data.eval_batch_size=100000, data.height=256, data.width=128: feature extraction needs about" in line, line
    features = tmp_path / "features.npy"
    line = one_error_line(CliRunner().invoke(cli, ["extract", "--dataset", "dukemtmc", "--out", str(features), *common]))
    assert "feature extraction needs about" in line and not features.exists(), line


def test_a_typo_in_the_memory_limit_is_named_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "lots")
    root = tmp_path / "data"  # synthx would be generated here first if the check came late
    result = CliRunner().invoke(cli, ["usl", "--dataset", "synthx", "--data-root", str(root), "--out",
                                      str(tmp_path / "run"), "--quiet", "--set", "device=cpu"])
    assert one_error_line(result) == f"Error: {MEMORY_LIMIT_ENV}='lots': expected a size such as 8GiB, 512MiB or a number of bytes"
    assert not root.exists() and not (tmp_path / "run").exists()
