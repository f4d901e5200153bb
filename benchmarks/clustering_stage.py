"""Clustering-stage benchmark: wall time per step, peak memory and cluster counts as JSON.

    python benchmarks/clustering_stage.py --n 32621 --dim 2048 --floor --json
    python benchmarks/clustering_stage.py --n 32621 --dim 2048 --compare-float32   # bf16 candidates vs float32
    python benchmarks/clustering_stage.py --n 12936 --reference

Also ``udareid bench clustering`` in a source checkout (the CLI loads this file only when called). Features are synthetic (identities × samples with camera offsets,
L2-normalised) or loaded from a ``.npy``. Optional comparisons, all in the same process:

* ``--reference``: the dense published algorithm (``benchmarks/reference_jaccard.py``, N ≲ 15,000):
  speed ratio and max |difference| of the distances;
* ``--floor``: a bare blocked product + top-k of the same size (the arithmetic a plain exact kNN
  must do) and our kNN + Jaccard time relative to it;
* ``--compare-products``: throughput of numpy, torch and faiss on one block product, to see which
  BLAS is fastest on the machine;
* approximate kNN backends always report recall@k1 against exact search on a 2,000-row sample.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
from sklearn.cluster import DBSCAN

from uda_reid.clustering.cluster import CLUSTERERS, make_clusterer
from uda_reid.clustering.inputs import unit_features
from uda_reid.clustering.jaccard import jaccard_from_neighbors, to_dense
from uda_reid.clustering.knn import KNN_BACKENDS, knn_search, numba_threads, resolve_backend
from uda_reid.device import resolve_device
from uda_reid.errors import ConfigError, UdaReidError

GIB = float(1 << 30)


def synthetic_features(
    num_samples: int,
    dim: int,
    *,
    seed: int = 0,
    samples_per_identity: int = 31,
    num_cameras: int = 15,
    noise: float = 0.6,
    camera_shift: float = 0.3,
    spectrum_decay: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """N×D float32 unit features with identity structure, and the identity of each row.

    ``samples_per_identity`` images of each identity (rows shuffled); row = identity centre +
    camera offset·``camera_shift`` + Gaussian noise·``noise``, L2-normalised. Identity centres are
    Gaussian with the variance of dimension d ∝ (d+1)^−``spectrum_decay`` (rescaled to mean 1 per
    dim): learned embeddings have such decaying spectra, so similar-looking identities exist
    (0 gives isotropic centres, all nearly orthogonal: a worst case for approximate search that real
    features do not present). Camera offsets and noise are isotropic, per-dim standard normal.
    Defaults give a same-identity cosine ≈ 0.69; 31 images per identity and 15 cameras mimic MSMT17
    train. Generated in chunks so a million rows need only the output array.
    """
    rng = np.random.default_rng(seed)
    num_identities = max(1, -(-num_samples // samples_per_identity))
    variance = (np.arange(1, dim + 1, dtype=np.float64)) ** -float(spectrum_decay)
    scale = np.sqrt(variance * dim / variance.sum()).astype(np.float32)
    centres = rng.standard_normal((num_identities, dim), dtype=np.float32) * scale
    cameras = rng.standard_normal((num_cameras, dim), dtype=np.float32) * np.float32(camera_shift)
    identities = rng.permutation(np.arange(num_samples) // samples_per_identity)
    camera_of = rng.integers(0, num_cameras, num_samples)
    features = np.empty((num_samples, dim), dtype=np.float32)
    for start in range(0, num_samples, 65536):
        stop = min(num_samples, start + 65536)
        chunk = rng.standard_normal((stop - start, dim), dtype=np.float32)
        chunk *= np.float32(noise)
        chunk += centres[identities[start:stop]]
        chunk += cameras[camera_of[start:stop]]
        chunk /= np.linalg.norm(chunk, axis=1, keepdims=True)
        features[start:stop] = chunk
    return features, identities


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux ≥ 4.0) so the stage's own peak can be read."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _peak_rss_gib() -> float:
    with contextlib.suppress(OSError):  # no /proc: fall back to getrusage
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / GIB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def load_reference_module():
    """Import ``benchmarks/reference_jaccard.py`` from the source checkout by path."""
    path = Path(__file__).resolve().parent / "reference_jaccard.py"
    if not path.is_file():
        raise ConfigError(
            f"--reference needs the dense reference at {path}, which is part of the source checkout "
            "(benchmarks/ is not installed with the package); run from a clone of the repository"
        )
    spec = importlib.util.spec_from_file_location("reference_jaccard", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def floor_seconds(unit: torch.Tensor, k: int, block_rows: int = 2048) -> float:
    """Time of a bare blocked product + top-k (every row block times all rows, no symmetry)."""
    start = time.perf_counter()
    for i0 in range(0, unit.shape[0], block_rows):
        block = unit[i0 : i0 + block_rows] @ unit.T
        torch.topk(block, k, dim=1)
    return time.perf_counter() - start


def compare_products(dim: int, block: int = 2048, repeats: int = 3) -> dict[str, float]:
    """GFLOP/s of one block×block float32 product in numpy, torch and faiss (k-NN search incl. top-k)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((block, dim), dtype=np.float32)
    b = rng.standard_normal((block, dim), dtype=np.float32)
    flops = 2.0 * block * block * dim

    def best(run) -> float:
        run()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return round(flops / min(times) / 1e9, 1)

    out_np = np.empty((block, block), dtype=np.float32)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    out_t = torch.empty(block, block)
    result = {
        "numpy_matmul_gflops": best(lambda: np.matmul(a, b.T, out=out_np)),
        "torch_mm_gflops": best(lambda: torch.mm(ta, tb.T, out=out_t)),
    }
    with contextlib.suppress(ImportError):  # faiss is optional for this comparison
        import faiss

        result["faiss_knn_gflops"] = best(lambda: faiss.knn(a, b, 30, metric=faiss.METRIC_INNER_PRODUCT))
    return result


def recall_at_k(unit: torch.Tensor, approximate: np.ndarray, k: int, sample: int, seed: int) -> float:
    """Mean |approx ∩ exact| / k over ``sample`` random rows (exact by one blocked product)."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(unit.shape[0], min(sample, unit.shape[0]), replace=False))
    hits = 0
    for start in range(0, len(rows), 64):
        chosen = rows[start : start + 64]
        similarities = unit[torch.from_numpy(chosen)] @ unit.T
        exact = torch.topk(similarities, k, dim=1).indices.numpy()
        for row, exact_row in zip(chosen, exact):
            hits += len(np.intersect1d(approximate[row, :k], exact_row))
    return hits / (len(rows) * k)


def run_benchmark(
    *,
    n: int,
    dim: int,
    k1: int = 30,
    k2: int = 6,
    knn: str = "auto",
    clusterer: str = "dbscan",
    seed: int = 0,
    features_path: Path | None = None,
    max_distance: Any = "auto",
    reference: bool = False,
    floor: bool = False,
    products: bool = False,
    recall_sample: int = 2000,
    generator: dict[str, Any] | None = None,
    product: str = "auto",
    compare_float32: bool = False,
    device: str = "auto",
) -> dict[str, Any]:
    """Run the stage once on synthetic or loaded features and return the figures as a dict."""
    report: dict[str, Any] = {"load_average_at_start": _load_average()}
    if features_path is not None:
        features = np.load(features_path, mmap_mode=None)
        report["features"] = str(features_path)
    else:
        features, _ = synthetic_features(n, dim, seed=seed, **(generator or {}))
        report["features"] = {"synthetic": generator or {}}
    checked = unit_features(features)  # checked and normalised once, as cluster_stage does
    unit = checked.tensor
    del features
    n, dim = unit.shape
    model = make_clusterer(clusterer)
    limit = (model.max_distance if max_distance == "auto" else max_distance) if not reference else None
    where = resolve_device(device)
    backend = resolve_backend(knn, n, dim, where)
    report.update(
        n=n, dim=dim, k1=k1, k2=k2, knn=knn, knn_backend=backend, clusterer=clusterer, seed=seed, device=str(where),
        max_distance=limit, threads={"torch": torch.get_num_threads(), "numba": numba_threads()},
    )
    # warm-up: numba kernels compile (or load from cache) outside the timed region
    warm, _ = synthetic_features(400, 16, seed=1)
    warm_k1 = min(k1, 100)
    warm_lists = knn_search(warm, warm_k1, knn=backend, device=where).indices
    jaccard_from_neighbors(warm, warm_lists, warm_k1, min(k2, warm_k1))

    knn_options = {"product": product} if backend == "torch" else {}
    if backend == "torch":  # the bf16 kernels warm up too
        knn_search(warm, warm_k1, knn=backend, device=where, **knn_options)
    peak_reset = _reset_peak_rss()
    start = time.perf_counter()
    lists = knn_search(checked, k1, knn=backend, device=where, **knn_options)
    knn_seconds = time.perf_counter() - start
    report["knn_product"] = lists.product
    report["rechecked_rows"] = lists.rechecked_rows  # bf16: rows whose candidate margin had to be widened
    start = time.perf_counter()
    distance = jaccard_from_neighbors(checked, lists.indices, k1, k2, max_distance=limit)
    jaccard_seconds = time.perf_counter() - start
    peak_before_clustering = _peak_rss_gib()
    start = time.perf_counter()
    labels = model.fit_predict(distance) if model.input_kind == "distance" else model.fit_predict_features(checked)
    cluster_seconds = time.perf_counter() - start
    report["seconds"] = {
        "knn": round(knn_seconds, 3),
        "jaccard": round(jaccard_seconds, 3),
        "knn_plus_jaccard": round(knn_seconds + jaccard_seconds, 3),
        "cluster": round(cluster_seconds, 3),
        "total": round(knn_seconds + jaccard_seconds + cluster_seconds, 3),
    }
    # Peak resident memory of the process since the features were ready (the kernel's peak counter is
    # reset after generation/loading; it includes the features, the imported libraries and the stage).
    report["peak_rss_gib"] = {
        "knn_plus_jaccard": round(peak_before_clustering, 3),
        "stage": round(_peak_rss_gib(), 3),
        "peak_counter_reset": peak_reset,
    }
    if clusterer == "dbscan":  # scikit-learn's DBSCAN on the same matrix: the reference of the graph version
        start = time.perf_counter()
        expected = DBSCAN(eps=float(model.eps), min_samples=int(model.min_samples), metric="precomputed").fit(distance)
        report["seconds"]["cluster_sklearn"] = round(time.perf_counter() - start, 3)
        report["cluster_speedup_vs_sklearn"] = round(report["seconds"]["cluster_sklearn"] / max(cluster_seconds, 1e-9), 2)
        report["labels_equal_sklearn"] = bool(np.array_equal(labels, expected.labels_))
    report["stored_distances"] = int(distance.nnz)
    report["clusters"] = int(labels.max()) + 1 if labels.max() >= 0 else 0
    report["outliers"] = int((labels < 0).sum())
    if backend in ("faiss-ivf", "faiss-hnsw"):
        report["recall_at_k1"] = round(recall_at_k(unit, lists.indices, k1, recall_sample, seed), 4)
        report["recall_sample"] = min(recall_sample, n)
    if floor:
        seconds = floor_seconds(unit, k1)
        report["floor"] = {
            "seconds": round(seconds, 3),
            "knn_plus_jaccard_over_floor": round((knn_seconds + jaccard_seconds) / seconds, 3),
        }
    if reference:
        reference_module = load_reference_module()
        start = time.perf_counter()
        dense = reference_module.reference_jaccard(unit.numpy(), k1, k2)
        reference_seconds = time.perf_counter() - start
        ours = to_dense(distance)
        their_lists = reference_module.dense_neighbor_lists(unit.numpy(), k1)
        report["reference"] = {
            "seconds": round(reference_seconds, 3),
            "speedup": round(reference_seconds / (knn_seconds + jaccard_seconds), 2),
            "max_abs_difference": float(np.abs(ours - dense).max()),
            # rows whose k1-neighbour *sets* differ (float rounding at near-ties between the two products)
            "rows_with_different_neighbor_sets": int(
                sum(set(a.tolist()) != set(b.tolist()) for a, b in zip(their_lists, lists.indices))
            ),
            "peak_rss_gib_with_reference": round(_peak_rss_gib(), 3),
        }
        del dense, ours
    if compare_float32 and backend == "torch" and lists.product != "float32":
        start = time.perf_counter()
        exact = knn_search(checked, k1, knn=backend, device=where, product="float32")
        exact_knn_seconds = time.perf_counter() - start
        start = time.perf_counter()
        exact_distance = jaccard_from_neighbors(checked, exact.indices, k1, k2, max_distance=limit)
        exact_jaccard_seconds = time.perf_counter() - start
        exact_labels = (model.fit_predict(exact_distance) if model.input_kind == "distance"
                        else model.fit_predict_features(checked))
        report["float32_product"] = {
            "seconds": {"knn": round(exact_knn_seconds, 3), "jaccard": round(exact_jaccard_seconds, 3),
                        "knn_plus_jaccard": round(exact_knn_seconds + exact_jaccard_seconds, 3)},
            "identical_neighbor_lists": bool(np.array_equal(exact.indices, lists.indices)),
            # on a GPU the two rank by different float32 sums: neighbours within a last bit may swap
            "differing_list_entries": int((exact.indices != lists.indices).sum()),
            "identical_labels": bool(np.array_equal(exact_labels, labels)),
            "speedup_knn_plus_jaccard": round((exact_knn_seconds + exact_jaccard_seconds) / (knn_seconds + jaccard_seconds), 3),
        }
    if products:
        report["products_gflops"] = compare_products(dim)
    return report


def _max_distance_option(value: str) -> Any:
    if value in ("auto", "none"):
        return None if value == "none" else "auto"
    try:
        number = float(value)
    except ValueError:
        raise click.BadParameter(f"expected auto, none or a number in (0, 1]; received {value!r}") from None
    if not 0 < number <= 1:
        raise click.BadParameter(f"expected a number in (0, 1]; received {value}")
    return number


@click.command("clustering_bench")
@click.option("--n", "n", type=int, default=12936, show_default=True, help="Samples (synthetic features).")
@click.option("--dim", type=int, default=2048, show_default=True, help="Feature dimension (synthetic features).")
@click.option("--k1", type=int, default=30, show_default=True, help="k1 of the k-reciprocal Jaccard distance.")
@click.option("--k2", type=int, default=6, show_default=True, help="k2 (query expansion) of the Jaccard distance.")
@click.option("--knn", type=click.Choice(["auto", *KNN_BACKENDS.names()]), default="auto", show_default=True, help="kNN backend.")
@click.option("--clusterer", type=click.Choice(CLUSTERERS.names()), default="dbscan", show_default=True, help="Clusterer of the distance.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the synthetic features.")
@click.option("--features", "features_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="N×D .npy file instead of synthetic features.")
@click.option("--max-distance", default="auto", show_default=True, help="auto (clusterer's eps), none, or a number in (0, 1].")
@click.option("--reference", is_flag=True, help="Also run the dense published algorithm (N ≲ 15,000) and compare (our distance is then computed in full: max-distance none).")
@click.option("--floor", is_flag=True, help="Also time a bare blocked product + top-k of the same size.")
@click.option("--compare-products", "products", is_flag=True, help="Also measure numpy / torch / faiss product throughput.")
@click.option("--recall-sample", type=int, default=2000, show_default=True, help="Rows used for recall@k1 of approximate kNN.")
@click.option("--samples-per-identity", type=click.IntRange(min=1), default=31, show_default=True, help="Synthetic: images per identity.")
@click.option("--noise", type=click.FloatRange(min=0), default=0.6, show_default=True, help="Synthetic: per-dim noise scale (1.0 = hard).")
@click.option("--spectrum-decay", type=click.FloatRange(min=0), default=1.0, show_default=True, help="Synthetic: identity-centre spectrum exponent (0 = isotropic).")
@click.option("--product", type=click.Choice(["auto", "float32", "bf16"]), default="auto", show_default=True,
              help="Arithmetic of the exact kNN's candidate search (bf16: re-scored and certified in float32).")
@click.option("--compare-float32", is_flag=True, help="Also run kNN + Jaccard + clustering with the float32 product: time, identical lists and labels.")
@click.option("--device", default="auto", show_default=True, help="Where the exact kNN runs: auto (cuda when available), cpu, cuda or cuda:N.")
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON object.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Also write the JSON to this file.")
def clustering_bench(
    n, dim, k1, k2, knn, clusterer, seed, features_path, max_distance, reference, floor, products, recall_sample,
    samples_per_identity, noise, spectrum_decay, product, compare_float32, device, as_json, output,
):
    """Time the clustering stage (kNN, Jaccard, clustering) and print the figures as JSON."""
    if n < 2 or dim < 1:
        raise click.BadParameter(f"--n must be ≥ 2 and --dim ≥ 1; received {n} and {dim}")
    report = run_benchmark(
        n=n, dim=dim, k1=k1, k2=k2, knn=knn, clusterer=clusterer, seed=seed, features_path=features_path,
        max_distance=_max_distance_option(max_distance), reference=reference, floor=floor, products=products,
        recall_sample=recall_sample,
        generator={"samples_per_identity": samples_per_identity, "noise": noise, "spectrum_decay": spectrum_decay},
        product=product, compare_float32=compare_float32, device=device,
    )
    text = json.dumps(report, indent=None if as_json else 2)
    if output is not None:
        temporary = output.with_name(output.name + ".tmp")
        temporary.write_text(text + "\n")
        os.replace(temporary, output)
    if not as_json:
        seconds = report["seconds"]
        click.echo(
            f"N={report['n']} D={report['dim']} knn={report['knn_backend']}: kNN {seconds['knn']} s, "
            f"Jaccard {seconds['jaccard']} s, {report['clusterer']} {seconds['cluster']} s; "
            f"peak RSS {report['peak_rss_gib']['stage']} GiB; {report['clusters']} clusters, "
            f"{report['outliers']} outliers",
            err=True,
        )
    click.echo(text)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark command with ``argv`` (default: sys.argv[1:]); returns the exit code."""
    try:
        clustering_bench.main(args=list(argv) if argv is not None else sys.argv[1:], standalone_mode=False)
    except click.exceptions.Exit as exit_request:
        return int(exit_request.exit_code)
    except click.ClickException as error:
        error.show()
        return error.exit_code
    except UdaReidError as error:
        click.echo(f"Error: {error}", err=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
