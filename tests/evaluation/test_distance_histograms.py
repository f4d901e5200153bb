"""Positive / negative pair-distance histograms against a brute-force count over all pairs."""

import itertools
import json

import numpy as np
import torch

from uda_reid.evaluation.distances import BINS, pair_histogram, save_histograms


def brute_force(rows, row_ids, columns=None, column_ids=None, row_cams=None, column_cams=None):
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    rows = unit(rows.numpy().astype(np.float64))
    pairs = []
    if columns is None:
        for i, j in itertools.combinations(range(len(rows)), 2):
            pairs.append((np.linalg.norm(rows[i] - rows[j]), row_ids[i], row_ids[j], None, None))
    else:
        columns = unit(columns.numpy().astype(np.float64))
        for i in range(len(rows)):
            for j in range(len(columns)):
                cams = (row_cams[i], column_cams[j]) if row_cams is not None else (None, None)
                pairs.append((np.linalg.norm(rows[i] - columns[j]), row_ids[i], column_ids[j], *cams))
    positive, negative = [], []
    for d, a, b, ca, cb in pairs:
        if a < 0 or b < 0 or (a == b and ca is not None and ca == cb):
            continue
        (positive if a == b else negative).append(d)
    edges = np.linspace(0, 2, BINS + 1)
    return np.histogram(positive, edges)[0], np.histogram(negative, edges)[0]


def test_within_split_histogram_counts_every_unordered_pair_once_and_skips_unknown_ids():
    torch.manual_seed(0)
    features = torch.randn(23, 6)
    ids = np.array([0, 0, 1, 1, 1, 2, -1, 3] * 3)[:23]
    histogram = pair_histogram(features, ids, block=5)  # several blocks, so block edges are exercised
    positive, negative = brute_force(features, ids)
    assert histogram.positive.sum() == positive.sum() and histogram.negative.sum() == negative.sum()
    # bin edges may split floating-point ties differently; allow a pair to land one bin over
    assert np.abs(np.cumsum(histogram.positive) - np.cumsum(positive)).max() <= 1
    assert np.abs(np.cumsum(histogram.negative) - np.cumsum(negative)).max() <= 1


def test_query_gallery_histogram_skips_same_camera_matches_like_the_protocol():
    torch.manual_seed(1)
    query, gallery = torch.randn(5, 4), torch.randn(17, 4)
    query_ids, gallery_ids = np.array([1, 2, 3, 4, 5]), np.array([1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 0, 0, -1, 6, 6, 7, 1])
    query_cams, gallery_cams = np.zeros(5, dtype=int), np.array([0, 1] * 8 + [0])
    histogram = pair_histogram(query, query_ids, gallery, gallery_ids, row_cameras=query_cams, column_cameras=gallery_cams)
    positive, negative = brute_force(query, query_ids, gallery, gallery_ids, query_cams, gallery_cams)
    assert histogram.positive.sum() == positive.sum() == 5  # ids 1-5 each have one other-camera gallery image
    assert histogram.negative.sum() == negative.sum()
    assert np.abs(np.cumsum(histogram.negative) - np.cumsum(negative)).max() <= 1


def test_summary_and_saved_files_agree(tmp_path):
    torch.manual_seed(2)
    features = torch.randn(30, 8)
    ids = np.repeat(np.arange(6), 5)
    histogram = pair_histogram(features, ids)
    json_path, png_path = save_histograms({"train": histogram}, tmp_path)
    record = json.loads(json_path.read_text())
    assert record["train"]["positive"] == histogram.positive.tolist() and len(record["edges"]) == BINS + 1
    summary = histogram.summary()
    assert summary["pos_pairs"] == 6 * 10 and summary["neg_pairs"] == 30 * 29 // 2 - 60
    unit = torch.nn.functional.normalize(features, dim=1)
    same = [float((unit[i] - unit[j]).norm()) for i, j in itertools.combinations(range(30), 2) if ids[i] == ids[j]]
    assert abs(summary["pos_mean"] - np.mean(same)) < 0.01  # bin centres are within half a bin (0.01)
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
