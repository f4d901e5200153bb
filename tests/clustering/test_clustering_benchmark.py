"""The clustering benchmark runs end to end on a tiny size and its comparisons are meaningful."""

import json

import numpy as np

from clustering_stage import main, synthetic_features  # benchmarks/ (pytest's pythonpath)


def test_benchmark_json_with_reference_and_floor(capsys, tmp_path):
    output = tmp_path / "figures.json"
    code = main(["--n", "400", "--dim", "16", "--k1", "20", "--reference", "--floor", "--json", "--output", str(output)])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(output.read_text())
    assert printed["n"] == 400 and printed["knn_backend"] == "torch"
    assert printed["reference"]["max_abs_difference"] <= 1e-5
    assert printed["reference"]["rows_with_different_neighbor_sets"] == 0
    assert printed["clusters"] + printed["outliers"] > 0
    assert printed["seconds"]["knn_plus_jaccard"] > 0 and printed["floor"]["seconds"] > 0
    # DBSCAN is timed against scikit-learn's on the same matrix, labels compared
    assert printed["labels_equal_sklearn"] is True and printed["seconds"]["cluster_sklearn"] > 0
    assert printed["cluster_speedup_vs_sklearn"] > 0


def test_benchmark_reports_recall_for_approximate_knn_on_loaded_features(capsys, tmp_path):
    features, _ = synthetic_features(1500, 32, seed=3)
    path = tmp_path / "features.npy"
    np.save(path, features)
    code = main(["--features", str(path), "--knn", "faiss-ivf", "--recall-sample", "300", "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["n"] == 1500 and printed["dim"] == 32
    assert 0.9 <= printed["recall_at_k1"] <= 1.0


def test_synthetic_features_have_identity_structure():
    features, identities = synthetic_features(600, 64, seed=0)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1, atol=1e-5)
    similarity = features @ features.T
    same = identities[:, None] == identities[None, :]
    np.fill_diagonal(same, False)
    different = identities[:, None] != identities[None, :]
    assert similarity[same].mean() > 0.6
    assert abs(similarity[different].mean()) < 0.15


def test_benchmark_rejects_bad_max_distance(capsys):
    assert main(["--n", "100", "--dim", "8", "--max-distance", "2"]) != 0
    assert "(0, 1]" in capsys.readouterr().err


def test_benchmark_compares_the_bf16_product_with_float32_on_lists_and_labels(capsys):
    code = main(["--n", "1200", "--dim", "64", "--product", "bf16", "--compare-float32", "--json", "--device", "cpu"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["knn_product"] == "bf16" and 0 <= printed["rechecked_rows"] <= 1200
    assert printed["float32_product"]["identical_neighbor_lists"] is True
    assert printed["float32_product"]["identical_labels"] is True
    assert printed["float32_product"]["differing_list_entries"] == 0 and printed["device"] == "cpu"
