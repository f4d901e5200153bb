"""A user's own cameras: a flat folder of unlabeled images, no ids, no camera ids -> a finished run
with label-free diagnostics, cluster grids and a best.pt; dataset options reach every command."""

import json
import shutil

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from tiny_reid_data import metrics_rows, write_two_domains

from uda_reid.cli import cli
from uda_reid.data.datasets import load_dataset
from uda_reid.errors import ConfigError

TINY = ["device=cpu", "data.height=32", "data.width=16", "data.batch_size=16", "data.workers=0", "data.pad=2",
        "model.arch=resnet18", "optim.warmup_epochs=0", "clustering.k1=6", "clustering.k2=2", "clustering.min_samples=2",
        "adapt.iters_per_epoch=2", "adapt.bn_groups=1"]


@pytest.fixture
def own_images(tmp_path):
    """The tiny target domain's training images, renamed at random into one flat folder."""
    data_root = write_two_domains(tmp_path / "data")
    folder = tmp_path / "my_cameras"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for path in sorted((data_root / "DukeMTMC-reID" / "bounding_box_train").glob("*.jpg")):
        shutil.copy(path, folder / f"{rng.integers(1 << 40):x}.jpg")
    return folder


def test_a_folder_spec_is_the_folder_dataset_with_its_path(own_images):
    dataset = load_dataset(f"folder:{own_images}", camera_regex="none")
    assert dataset.name == "folder" and len(dataset.train) == 72 and not dataset.query
    assert {s.camid for s in dataset.train} == {0} and {s.pid for s in dataset.train} == {-1}
    with pytest.raises(ConfigError, match="dataset 'market1501' takes no path .* Only 'folder' takes one"):
        load_dataset(f"market1501:{own_images}")


def test_usl_on_a_folder_of_unlabeled_images_logs_diagnostics_and_draws_clusters(own_images, tmp_path):
    out = tmp_path / "run"
    args = ["usl", "--dataset", f"folder:{own_images}", "--out", str(out),  # ordinary names: no camera ids
            "--epochs", "2", "--quiet", *[a for item in TINY for a in ("--set", item)]]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "no query/gallery split, so no mAP" in result.output and "outlier_share" in result.output
    assert "are read as one camera" in result.output and "are read as one camera" in (out / "log.txt").read_text()
    rows = metrics_rows(out)
    assert [r["epoch"] for r in rows] == [1, 2]  # no epoch-0 evaluation without a query/gallery split
    assert all("mAP" not in r and "outlier_share" in r and "intra_distance" in r for r in rows)
    assert "ari_previous" in rows[1] and "ari_previous" not in rows[0]
    assert (out / "clusters_epoch001.png").exists() and (out / "clusters_epoch002.png").exists()
    assert (out / "best.pt").exists() and (out / "metrics.png").exists()
    from tiny_reid_data import tensorboard_events

    shown = tensorboard_events(out)  # the cluster grid and the label-free figures, by epoch
    assert [step for step, _ in shown["clusters"]] == [1, 2] and [s for s, _ in shown["label_free/outlier_share"]] == [1, 2]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_mAP"] is None and summary["diagnostics"]["clusters"] == rows[-1]["clusters"]
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["target"] == f"folder:{own_images}" and saved["dataset_options"] == {}
    # the same command with --resume: the saved config (folder and its option) matches, nothing to redo
    again = CliRunner().invoke(cli, args + ["--resume"])
    assert again.exit_code == 0 and "no mAP" in again.output, again.output


def test_an_unknown_dataset_option_is_refused_before_the_run_folder_exists(own_images, tmp_path):
    result = CliRunner().invoke(cli, ["usl", "--dataset", f"folder:{own_images}", "--dataset-option", "cameras=none",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert "dataset 'folder' got unknown option(s) cameras; it takes: path, camera_regex" in result.output
    assert not (tmp_path / "run").exists()


def test_eps_auto_is_derived_once_logged_and_kept_through_a_resume(tmp_path, monkeypatch):
    from tiny_reid_data import assert_resume_reaches_the_uninterrupted_run, tiny_adapt_config

    data_root = write_two_domains(tmp_path / "data")
    config = tiny_adapt_config(target="dukemtmc", **{"adapt.method": "spcl", "clustering.eps": "auto",
                                                     "clustering.eps_rho": 0.2})
    assert_resume_reaches_the_uninterrupted_run(config, tmp_path, data_root, monkeypatch, kill_after=1)
    rows = [r for r in metrics_rows(tmp_path / "full") if r["epoch"] > 0]
    assert len({r["eps"] for r in rows}) == 1 and 0 < rows[0]["eps"] < 1  # derived at epoch 1, then kept
    saved = yaml.safe_load((tmp_path / "full" / "config.yaml").read_text())
    assert saved["clustering"]["eps"] == "auto"  # the config as written; the value is in the rows and last.pt
