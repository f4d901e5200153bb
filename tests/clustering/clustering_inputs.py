"""Small inputs shared by the clustering tests."""

import numpy as np


def clustered_features(n=500, dim=24, identities=25, noise=0.7, seed=0):
    """Features with identity structure (centres + noise), float32; returns (features, identities)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, identities, n)
    centres = rng.standard_normal((identities, dim))
    return (centres[ids] + noise * rng.standard_normal((n, dim))).astype(np.float32), ids


def blobs(sizes=(30, 25, 20), dim=16, spread=0.05, seed=0):
    """Well-separated unit-norm blobs: each clusterer must recover them exactly."""
    rng = np.random.default_rng(seed)
    centres = np.linalg.qr(rng.standard_normal((dim, dim)))[0][: len(sizes)]  # orthonormal directions
    rows, truth = [], []
    for label, size in enumerate(sizes):
        rows.append(centres[label] + spread * rng.standard_normal((size, dim)))
        truth += [label] * size
    return np.concatenate(rows).astype(np.float32), np.array(truth)


def same_partition(a, b):
    """Labels equal up to renaming of clusters (outliers −1 must match exactly)."""
    a, b = np.asarray(a), np.asarray(b)
    if not np.array_equal(a < 0, b < 0):
        return False
    pairs = set(zip(a[a >= 0].tolist(), b[b >= 0].tolist()))
    return len(pairs) == len({x for x, _ in pairs}) == len({y for _, y in pairs})
