"""udareid extract: a model's features of a folder or a dataset split, with their paths, to .npy or .npz."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from tiny_reid_data import save_tiny_checkpoint, write_two_domains

from uda_reid.cli import cli
from uda_reid.data.datasets import load_dataset
from uda_reid.models.features import extract_features


@pytest.fixture
def checkpoint(tmp_path):
    return save_tiny_checkpoint(tmp_path / "best.pt")


def test_npy_features_are_the_models_normalised_features_in_index_order(tmp_path, checkpoint):
    weights, model, config = checkpoint
    data_root = write_two_domains(tmp_path / "data")
    out = tmp_path / "out" / "duke_query.npy"
    result = CliRunner().invoke(cli, ["extract", "--weights", str(weights), "--dataset", "duke", "--split", "query",
                                      "--data-root", str(data_root), "--out", str(out), "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "8 images of dukemtmc (query)" in result.output
    features = np.load(out)
    query = load_dataset("dukemtmc", data_root).query
    expected = extract_features(model.eval(), query, config.data, device=torch.device("cpu"), progress=False)
    np.testing.assert_allclose(features, torch.nn.functional.normalize(expected, dim=1).numpy(), atol=1e-5)
    rows = (out.parent / "duke_query.npy.index.tsv").read_text().splitlines()
    assert rows[0] == "row\tpath\tpid\tcamid" and len(rows) == 9
    assert rows[1].split("\t")[1:] == [query[0].path, str(query[0].pid), str(query[0].camid)]


def test_a_folder_of_images_goes_to_one_npz_with_paths(tmp_path, checkpoint):
    weights, _, _ = checkpoint
    data_root = write_two_domains(tmp_path / "data")
    folder = data_root / "DukeMTMC-reID" / "query"
    out = tmp_path / "mine.npz"
    result = CliRunner().invoke(cli, ["extract", "--weights", str(weights), "--images", str(folder), "--out", str(out),
                                      "--dataset-option", "camera_regex=none", "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    saved = np.load(out)
    assert saved["features"].shape == (8, 512) and len(saved["paths"]) == 8
    np.testing.assert_allclose(np.linalg.norm(saved["features"], axis=1), 1, atol=1e-5)
    assert set(saved["pids"]) == {-1} and set(saved["camids"]) == {0}


def test_extract_names_what_is_wrong_in_one_line(tmp_path, checkpoint):
    weights, _, _ = checkpoint
    both = CliRunner().invoke(cli, ["extract", "--weights", str(weights), "--out", str(tmp_path / "f.npy")])
    assert both.exit_code == 1 and "exactly one of --images DIR and --dataset NAME" in both.output
    data_root = write_two_domains(tmp_path / "data")
    suffix = CliRunner().invoke(cli, ["extract", "--weights", str(weights), "--dataset", "duke", "--data-root",
                                      str(data_root), "--out", str(tmp_path / "f.csv"), "--device", "cpu"])
    assert suffix.exit_code == 1 and "expected a .npy file" in suffix.output and not (tmp_path / "f.csv").exists()
