"""Synthetic UDA / USL benchmark, synthx -> synthm, as JSON: direct transfer against every method, over seeds.

    python benchmarks/synthetic_uda.py --seeds 1,2,3 --out runs/bench_synthetic_uda [--runs a,b] [--reuse]
    python benchmarks/synthetic_uda.py --seeds 1,2,3 --runs spcl_uda --precision bf16   # source stage too

For each seed, one supervised source model (the recipes' shared source stage: ResNet-18 on synthx,
trained with that seed, or the one of ``--source-seed``) is the starting point of every run: evaluated
on synthm as is (direct transfer), adapted with SpCL (UDA; with the seed's source model this is exactly
``udareid adapt --source synthx --target synthm --seed S``), the clustering baseline (+ GDS / GDS-H),
SpCL + GDS, and trained on synthm images alone (USL) with SpCL, the baseline, PPLR (+ PPLR's or CAP's
camera-proxy losses), CAP and cluster-contrast.

Prints, per run and seed, mAP / Rank-1 of the last epoch, the best mAP, the gain over the seed's direct
transfer and the wall time; and per run the mean ± sample standard deviation (n − 1) over the seeds
and the smallest gain. ``--reuse`` keeps runs whose folder already has a summary.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import click

from uda_reid.config import apply_overrides, find_recipe, load_recipe
from uda_reid.engine.loop import adapt, source_stage_config, train_supervised
from uda_reid.precision import PRECISIONS

# name: (recipe, overrides applied on top of it)
RUNS: dict[str, tuple[str, dict[str, Any]]] = {
    "spcl_uda": ("spcl_synthx_to_synthm", {}),
    # the random erasing uda_reid used before 0.2.0 (torchvision's, zero fill), from the same source models
    "spcl_uda_torchvision_erasing": ("spcl_synthx_to_synthm", {"data.erasing": "torchvision"}),
    "spcl_usl": ("spcl_synthx_to_synthm", {"source": None}),
    "baseline": ("baseline_synthx_to_synthm", {}),
    "baseline_gds": ("baseline_synthx_to_synthm", {"gds.enabled": True}),
    "baseline_gds_h": ("gds_synthx_to_synthm", {}),
    "spcl_gds": ("spcl_synthx_to_synthm", {"gds.enabled": True}),
    # unsupervised on synthm from the same source model
    "baseline_usl": ("baseline_usl_synthm", {}),
    "pplr_usl": ("pplr_usl_synthm", {}),
    "pplr_cam_usl": ("pplr_cam_usl_synthm", {}),
    "pplr_cap_losses_usl": ("pplr_usl_synthm", {"camera_proxies.mode": "cap"}),
    "cap_usl": ("cap_usl_synthm", {}),
    "cluster_contrast_usl": ("cluster_contrast_usl_synthm", {}),
    "cluster_contrast_usl_torchvision_erasing": ("cluster_contrast_usl_synthm", {"data.erasing": "torchvision"}),
    # the same with eps derived from the data (Song et al.), against the recipe's tuned 0.5
    "cluster_contrast_usl_eps_auto": ("cluster_contrast_usl_synthm", {"clustering.eps": "auto"}),
    # rho from a prior of the images per identity (12.3 of 1,843 on synthm) instead of Market's 1.6e-3
    "cluster_contrast_usl_eps_auto_rho": ("cluster_contrast_usl_synthm", {"clustering.eps": "auto",
                                                                          "clustering.eps_rho": 6.7e-3}),
    "spcl_usl_eps_auto": ("spcl_synthx_to_synthm", {"source": None, "clustering.eps": "auto"}),
    # the LUPerson transformer (ViT-S ICS) with its own source stage on synthx (no ResNet-18 weights fit it):
    # run it alone (--runs cluster_contrast_vit_uda) so its direct transfer is its own source model's
    "cluster_contrast_vit_uda": ("cluster_contrast_vit_synthx_to_synthm", {"model.init": None}),
}


def _pick(summary: dict, key: str) -> dict:
    figures = summary[key] if key in summary else summary["direct_transfer"]  # summaries written before "initial"
    return {k: round(v, 2) for k, v in figures.items() if k in ("mAP", "rank1")}


def _spread(values: list[float]) -> dict[str, float]:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": round(mean, 2), "std": round(std, 2)}


def _source_model(out: Path, seed: int, data_root: Path | None, settings: dict[str, str], reuse: bool, quiet: bool,
                  seconds: dict[str, float]) -> Path:
    """The source stage of the synthetic recipes, trained with ``seed`` (once per seed)."""
    model = out / f"source_seed{seed}" / "best.pt"
    if not (reuse and (model.parent / "summary.json").exists()):  # a finished stage, never a partial one
        config = apply_overrides(load_recipe(find_recipe("spcl_synthx_to_synthm")), {**settings, "seed": seed})
        started = time.perf_counter()
        train_supervised(source_stage_config(config), model.parent, data_root=data_root, progress=not quiet)
        seconds[f"source_seed{seed}"] = round(time.perf_counter() - started, 1)
    return model


@click.command()
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of the synthetic domains (default: $UDAREID_DATA, else ~/.cache/udareid/data; generated if missing).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/bench_synthetic_uda"), show_default=True,
              help="Folder of the source models and runs (per seed).")
@click.option("--runs", "selected", default=",".join(RUNS), show_default=True, help="Comma-separated subset of the runs.")
@click.option("--seeds", default="1", show_default=True, help="Comma-separated seeds; each trains its own source model.")
@click.option("--source-seed", type=int, default=None, help="Train one source model with this seed and start every seed's runs from it.")
@click.option("--source-model", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Start every run from this checkpoint instead of training the source stage.")
@click.option("--reuse", is_flag=True, help="Keep runs (and source models) already finished in --out.")
@click.option("--device", default="auto", show_default=True, help="auto (cuda when available, else cpu), cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(list(PRECISIONS)), default="fp32", show_default=True,
              help="Backbone arithmetic of the source stage and of every run.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def main(data_root: Path | None, out: Path, selected: str, seeds: str, source_seed: int | None,
         source_model: Path | None, reuse: bool, device: str, precision: str, quiet: bool) -> None:
    names = [name.strip() for name in selected.split(",") if name.strip()]
    unknown = sorted(set(names) - set(RUNS))
    if unknown:
        raise click.BadParameter(f"unknown run(s) {', '.join(unknown)}; known: {', '.join(RUNS)}", param_hint="--runs")
    try:
        seed_list = [int(seed) for seed in seeds.split(",") if seed.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {seeds!r}", param_hint="--seeds") from None
    settings = {"device": device, "precision": precision}
    seconds: dict[str, float] = {}
    per_seed: dict[str, dict[int, dict[str, float]]] = {"direct_transfer": {}}
    for seed in seed_list:
        model = source_model or _source_model(out, seed if source_seed is None else source_seed, data_root, settings,
                                              reuse, quiet, seconds)
        for name in names:
            recipe, overrides = RUNS[name]
            run_dir = out / f"seed{seed}" / name
            if reuse and (run_dir / "summary.json").exists():
                summary = json.loads((run_dir / "summary.json").read_text())
            else:
                config = apply_overrides(load_recipe(find_recipe(recipe)),
                                         {**settings, "model.init": str(model), "seed": seed, **overrides})
                started = time.perf_counter()
                summary = adapt(config, run_dir, data_root=data_root, progress=not quiet)
                seconds[f"seed{seed}/{name}"] = round(time.perf_counter() - started, 1)
            direct = per_seed["direct_transfer"].setdefault(seed, _pick(summary, "initial"))
            figures = {**_pick(summary, "last"), "best_mAP": round(summary["best_mAP"], 2)}
            figures["gain_mAP"] = round(figures["mAP"] - direct["mAP"], 2)
            per_seed.setdefault(name, {})[seed] = figures
    report: dict[str, Any] = {"seeds": seed_list, "precision": precision, "source_seed": source_seed, "std": "sample (n - 1)", "runs": {}}
    for name, by_seed in per_seed.items():
        entry: dict[str, Any] = {"per_seed": by_seed}
        for key in ("mAP", "rank1", "best_mAP", "gain_mAP"):
            values = [figures[key] for figures in by_seed.values() if key in figures]
            if values:
                entry[key] = _spread(values)
        if name != "direct_transfer":
            entry["min_gain_mAP"] = min(figures["gain_mAP"] for figures in by_seed.values())
        report["runs"][name] = entry
    report["seconds"] = seconds
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
