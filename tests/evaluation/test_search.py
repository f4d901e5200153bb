"""udareid search: each query's nearest gallery images, as JSON and pictures, in bounded memory."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from tiny_reid_data import save_tiny_checkpoint, write_two_domains

from uda_reid.cli import cli
from uda_reid.data.datasets import load_dataset
from uda_reid.data.layouts import Sample
from uda_reid.evaluation.ranked_list_picture import OTHER_ID, QUERY, SAME_ID, UNKNOWN_ID, save_ranked_list
from uda_reid.evaluation.search import nearest_gallery
from uda_reid.models.features import extract_features


def unit_rows(rows: int, dim: int, seed: int) -> np.ndarray:
    features = np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)
    return features / np.linalg.norm(features, axis=1, keepdims=True)


def test_nearest_gallery_equals_a_full_sort_whatever_the_block_size():
    query, gallery = unit_rows(7, 16, 0), unit_rows(50, 16, 1)
    full = 2 - 2 * query @ gallery.T
    expected = np.argsort(full, axis=1, kind="stable")[:, :5]
    for block_rows in (3, 8, 50, None):
        rows, distances = nearest_gallery(query, gallery, 5, block_rows=block_rows)
        np.testing.assert_array_equal(rows, expected)
        np.testing.assert_allclose(distances, np.take_along_axis(full, expected, axis=1), atol=1e-5)


def test_equal_distances_keep_gallery_order_and_the_query_image_is_left_out():
    gallery = unit_rows(4, 8, 2)[[0, 1, 0, 2, 0, 3]]  # row 0's feature at rows 0, 2 and 4
    query = gallery[[0]]
    rows, _ = nearest_gallery(query, gallery, 3, block_rows=2)
    np.testing.assert_array_equal(rows[0], [0, 2, 4])
    rows, distances = nearest_gallery(query, gallery, 3, skip_rows=np.array([2]), block_rows=2)
    np.testing.assert_array_equal(rows[0][:2], [0, 4])
    assert rows[0][2] not in (0, 2, 4) and distances[0][2] > 0.01


def test_the_protocols_junk_is_left_out_same_identity_and_same_camera():
    query, gallery = unit_rows(5, 16, 5), unit_rows(40, 16, 6)
    rng = np.random.default_rng(0)
    q_pids, q_cams = rng.integers(0, 4, 5), rng.integers(0, 3, 5)
    g_pids, g_cams = rng.integers(0, 4, 40), rng.integers(0, 3, 40)
    full = 2 - 2 * query @ gallery.T
    full[(q_pids[:, None] == g_pids[None]) & (q_cams[:, None] == g_cams[None])] = np.inf
    expected = np.argsort(full, axis=1, kind="stable")[:, :6]
    rows, _ = nearest_gallery(query, gallery, 6, same_camera_ids=(q_pids, q_cams, g_pids, g_cams), block_rows=7)
    np.testing.assert_array_equal(rows, expected)


def test_a_gallery_smaller_than_top_leaves_empty_places():
    rows, distances = nearest_gallery(unit_rows(2, 8, 3), unit_rows(3, 8, 4), 5, skip_rows=np.array([-1, 1]))
    assert (rows[0][:3] >= 0).all() and (rows[0][3:] == -1).all()
    assert sorted(rows[1][:2]) == [0, 2] and (rows[1][2:] == -1).all() and np.isinf(distances[1][2:]).all()


def test_borders_are_green_for_the_same_identity_red_for_another_grey_when_unknown(tmp_path):
    paths = []
    for number in range(4):
        path = tmp_path / f"{number}.png"
        Image.fromarray(np.full((32, 16, 3), 255, np.uint8)).save(path)
        paths.append(str(path))
    query = Sample(paths[0], 7, 0)
    matches = [Sample(paths[1], 7, 1), Sample(paths[2], 8, 1), Sample(paths[3], -1, 1)]
    picture = np.asarray(Image.open(save_ranked_list(query, matches, [0.1, 0.2, 0.3], tmp_path / "list.png",
                                                     size=(16, 32), border=3)))
    cell = 16 + 2 * 3
    starts = [0] + [cell + cell // 2 + rank * (cell + 4) for rank in range(3)]
    colours = [tuple(picture[1, x + 1]) for x in starts]
    assert colours == [QUERY, SAME_ID, OTHER_ID, UNKNOWN_ID]
    assert tuple(picture[10, starts[1] + 8]) == (255, 255, 255)  # the image itself inside the border


@pytest.fixture
def tiny_model(tmp_path):
    return (*save_tiny_checkpoint(tmp_path / "best.pt"), write_two_domains(tmp_path / "data"))


def invoke(*args):
    return CliRunner().invoke(cli, ["search", *map(str, args), "--device", "cpu", "--quiet"])


def test_searching_a_folder_in_a_folder_lists_the_nearest_images_with_a_picture_each(tmp_path, tiny_model):
    weights, model, config, data_root = tiny_model
    duke = data_root / "DukeMTMC-reID"
    result = invoke("--weights", weights, "--query", duke / "query", "--gallery", duke / "bounding_box_test",
                    "--top", 4, "--out", tmp_path / "lists")
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "lists" / "ranked_lists.json").read_text())
    query = load_dataset(f"folder:{duke / 'query'}").train
    gallery = load_dataset(f"folder:{duke / 'bounding_box_test'}").train
    cpu = torch.device("cpu")
    q = extract_features(model, query, config.data, device=cpu, progress=False).numpy()
    g = extract_features(model, gallery, config.data, device=cpu, progress=False).numpy()
    expected = np.argsort(2 - 2 * q @ g.T, axis=1, kind="stable")[:, :4]
    assert [entry["query"] for entry in saved["ranked_lists"]] == [s.path for s in query]
    listed = [[gallery.index(next(s for s in gallery if s.path == m["path"])) for m in entry["matches"]]
              for entry in saved["ranked_lists"]]
    np.testing.assert_array_equal(listed, expected)
    assert saved["first_match_same_id"] is None  # folders carry no identities
    assert len(list((tmp_path / "lists").glob("*.png"))) == len(query) == saved["num_queries"]


def test_a_gallery_of_extracted_features_gives_the_same_lists_and_the_query_image_is_not_its_own_match(tmp_path, tiny_model):
    weights, _, _, data_root = tiny_model
    gallery = data_root / "DukeMTMC-reID" / "bounding_box_test"
    features = tmp_path / "gallery.npy"
    extracted = CliRunner().invoke(cli, ["extract", "--weights", str(weights), "--images", str(gallery), "--out",
                                         str(features), "--device", "cpu", "--quiet"])
    assert extracted.exit_code == 0, extracted.output
    one_image = sorted(gallery.iterdir())[5]
    from_folder = invoke("--weights", weights, "--query", one_image, "--gallery", gallery, "--out", tmp_path / "a")
    from_features = invoke("--weights", weights, "--query", one_image, "--gallery", features, "--out", tmp_path / "b")
    assert from_folder.exit_code == 0 and from_features.exit_code == 0, from_folder.output + from_features.output
    lists = [json.loads((tmp_path / name / "ranked_lists.json").read_text())["ranked_lists"] for name in "ab"]
    paths = [[m["path"] for m in saved[0]["matches"]] for saved in lists]
    assert paths[0] == paths[1] and len(paths[0]) == 10 and str(one_image) not in paths[0]
    np.testing.assert_allclose([m["distance"] for m in lists[0][0]["matches"]],
                               [m["distance"] for m in lists[1][0]["matches"]], atol=1e-5)


def test_a_labelled_dataset_colours_matches_by_identity_and_reports_the_first_match_share(tmp_path, tiny_model):
    weights, model, config, data_root = tiny_model
    result = invoke("--weights", weights, "--dataset", "duke", "--data-root", data_root, "--top", 3,
                    "--out", tmp_path / "lists")
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "lists" / "ranked_lists.json").read_text())
    data = load_dataset("dukemtmc", data_root)
    by_path = {s.path: s for s in data.gallery}
    flags = [[m["same_id"] for m in entry["matches"]] for entry in saved["ranked_lists"]]
    assert flags == [[by_path[m["path"]].pid == entry["pid"] for m in entry["matches"]] for entry in saved["ranked_lists"]]
    assert saved["first_match_same_id"] == pytest.approx(np.mean([f[0] for f in flags]))
    assert f"{100 * saved['first_match_same_id']:.1f}%" in result.output
    for entry in saved["ranked_lists"]:  # the protocol's junk is not listed
        assert not any(by_path[m["path"]].pid == entry["pid"] and m["camid"] == entry["camid"] for m in entry["matches"])
    evaluated = CliRunner().invoke(cli, ["evaluate", "--dataset", "duke", "--weights", str(weights), "--data-root",
                                         str(data_root), "--json", "--device", "cpu", "--quiet"])
    assert 100 * saved["first_match_same_id"] == pytest.approx(json.loads(evaluated.stdout)["rank1"])


def test_search_names_what_is_wrong_in_one_line(tmp_path, tiny_model):
    weights, _, _, data_root = tiny_model
    duke = data_root / "DukeMTMC-reID"
    both = invoke("--weights", weights, "--dataset", "duke", "--query", duke / "query", "--out", tmp_path / "x")
    assert both.exit_code == 1 and "either --dataset NAME or --query and --gallery" in both.output
    lonely = invoke("--weights", weights, "--query", duke / "query", "--out", tmp_path / "x")
    assert lonely.exit_code == 1 and "needs --query IMG|DIR and --gallery DIR|FEATURES" in lonely.output
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    not_image = invoke("--weights", weights, "--query", text, "--gallery", duke / "query", "--out", tmp_path / "x")
    assert not_image.exit_code == 1 and "notes.txt: expected an image" in not_image.output
    small = tmp_path / "small.npz"
    np.savez(small, features=np.zeros((2, 8), np.float32), paths=np.array(["a.jpg", "b.jpg"]), pids=np.array([-1, -1]),
             camids=np.array([0, 0]))
    wrong_size = invoke("--weights", weights, "--query", duke / "query", "--gallery", small, "--out", tmp_path / "x")
    assert wrong_size.exit_code == 1 and "features of size 8, but these weights give 512" in wrong_size.output
    bare = tmp_path / "bare.npy"
    np.save(bare, np.zeros((2, 512), np.float32))
    no_index = invoke("--weights", weights, "--query", duke / "query", "--gallery", bare, "--out", tmp_path / "x")
    assert no_index.exit_code == 1 and "bare.npy.index.tsv" in no_index.output
    assert not (tmp_path / "x").exists()
