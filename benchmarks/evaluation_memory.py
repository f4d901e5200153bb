"""Evaluation at MSMT17 size in bounded memory: time and peak RSS of the Market-protocol ranking.

    python benchmarks/evaluation_memory.py                       # MSMT17 size: 11,659 × 82,161, D 2048
    python benchmarks/evaluation_memory.py --queries 3000 --gallery 20000 --compare-queries 3000
    python benchmarks/evaluation_memory.py --rerank              # k-reciprocal re-ranking too

Random L2-normalised features with random ids and cameras (the figures are meaningless; time and
memory are what is measured). Each measurement runs in a fresh Python process, so its peak RSS is
its own. ``--compare-*`` also ranks a smaller case both ways — query chunks (what ``evaluate``
does) and the whole Q×G matrix at once (the previous implementation) — in the same run, and checks
that the figures are identical. ``--rerank`` measures evaluation with k-reciprocal re-ranking the same
way (query chunks of the re-ranked distance against the whole re-ranked Q×G matrix; then at full
size, chunked). Prints JSON.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np
import torch

from uda_reid.evaluation.protocol import QUERY_CHUNK_ENTRIES, squared_euclidean
from uda_reid.evaluation.ranking import evaluate_ranking, evaluate_ranking_chunked
from uda_reid.evaluation.rerank import re_rank, re_rank_chunks

GIB = float(1 << 30)


def _case(queries: int, gallery: int, dim: int, ids: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    query = torch.nn.functional.normalize(torch.randn(queries, dim, generator=generator), dim=1)
    gallery_features = torch.nn.functional.normalize(torch.randn(gallery, dim, generator=generator), dim=1)
    rng = np.random.default_rng(seed)
    labels = (rng.integers(0, ids, queries), rng.integers(0, ids, gallery), rng.integers(0, 15, queries),
              rng.integers(0, 15, gallery))
    return query, gallery_features, labels


def _measure(mode: str, queries: int, gallery: int, dim: int, ids: int, seed: int) -> dict:
    """One evaluation in this process: its seconds and the process's peak RSS."""
    query, gallery_features, labels = _case(queries, gallery, dim, ids, seed)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)
    started = time.perf_counter()
    rows = max(1, QUERY_CHUNK_ENTRIES // gallery)
    if mode == "chunked":
        chunks = ((slice(s, min(s + rows, queries)), squared_euclidean(query[s : s + rows], gallery_features))
                  for s in range(0, queries, rows))
        result = evaluate_ranking_chunked(chunks, *labels)
    elif mode == "rerank_chunked":  # what evaluate --rerank does
        result = evaluate_ranking_chunked(re_rank_chunks(query, gallery_features, chunk_rows=rows), *labels)
    elif mode == "rerank_whole":
        result = evaluate_ranking(re_rank(query, gallery_features), *labels, chunk_rows=queries)
    else:  # the whole matrix, ranked at once
        result = evaluate_ranking(squared_euclidean(query, gallery_features), *labels, chunk_rows=queries)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)
    return {"seconds": round(seconds, 2), "peak_rss_gib": round(peak, 3),
            "peak_rss_above_inputs_gib": round(peak - before, 3),
            "mAP": result["mAP"], "cmc_head": [float(v) for v in result["cmc"][:5]]}


def measure(mode: str, **case) -> dict:
    """``_measure`` in a fresh Python process, so that its peak RSS is its own (a fork of a process
    whose BLAS / OpenMP threads already ran can deadlock)."""
    arguments = [f"--{key}={value}" for key, value in case.items()]
    finished = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--measure", mode, *arguments],
                              capture_output=True, text=True)
    if finished.returncode != 0:
        raise click.ClickException(f"the {mode} measurement failed:\n{finished.stderr.strip()}")
    return {"mode": mode, **case, **json.loads(finished.stdout.strip().splitlines()[-1])}


@click.command()
@click.option("--queries", type=click.IntRange(min=1), default=11659, show_default=True, help="Query images (MSMT17: 11,659).")
@click.option("--gallery", type=click.IntRange(min=1), default=82161, show_default=True, help="Gallery images (MSMT17: 82,161).")
@click.option("--dim", type=click.IntRange(min=1), default=2048, show_default=True, help="Feature dimension.")
@click.option("--ids", type=click.IntRange(min=1), default=3060, show_default=True, help="Identities the random ids are drawn from.")
@click.option("--compare-queries", type=click.IntRange(min=0), default=6000, show_default=True, help="Also rank a case of this many queries both ways (0: skip).")
@click.option("--compare-gallery", type=click.IntRange(min=1), default=20000, show_default=True, help="Gallery of the compared case.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random features.")
@click.option("--rerank", is_flag=True, help="Evaluation with k-reciprocal re-ranking (k1 20, k2 6, λ 0.3) instead.")
@click.option("--measure", "measure_mode", hidden=True, default=None,
              type=click.Choice(["chunked", "whole", "rerank_chunked", "rerank_whole"]),
              help="Internal: run one measurement in this process and print it (what each child process does).")
def main(queries, gallery, dim, ids, compare_queries, compare_gallery, seed, rerank, measure_mode):
    """Time and peak RSS of evaluation in query chunks, at MSMT17 size and against the whole matrix."""
    if measure_mode is not None:  # the child process of ``measure``
        click.echo(json.dumps(_measure(measure_mode, queries, gallery, dim, ids, seed)))
        return
    report: dict = {"chunk_entries": QUERY_CHUNK_ENTRIES, "threads": torch.get_num_threads(), "rerank": rerank}
    chunked_mode, whole_mode = ("rerank_chunked", "rerank_whole") if rerank else ("chunked", "whole")
    if compare_queries:
        case = {"queries": compare_queries, "gallery": compare_gallery, "dim": dim, "ids": ids, "seed": seed}
        chunked, whole = measure(chunked_mode, **case), measure(whole_mode, **case)
        report["comparison"] = {
            "chunked": chunked, "whole_matrix": whole,
            "identical_figures": chunked["mAP"] == whole["mAP"] and chunked["cmc_head"] == whole["cmc_head"],
            "peak_above_inputs_ratio_whole_over_chunked": round(
                whole["peak_rss_above_inputs_gib"] / max(chunked["peak_rss_above_inputs_gib"], 1e-3), 2),
        }
    report["full_size"] = measure(chunked_mode, queries=queries, gallery=gallery, dim=dim, ids=ids, seed=seed)
    click.echo(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
