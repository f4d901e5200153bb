"""Synthetic UDA / USL benchmark, synthx -> synthm, as JSON: direct transfer against every method.

    python benchmarks/synthetic_uda.py --out runs/bench_synthetic_uda [--data-root DIR] [--runs a,b] [--reuse]

One supervised source model (the recipes' shared source stage: ResNet-18 on synthx) is the starting
point of every run: evaluated on synthm as is (direct transfer), adapted with SpCL (UDA), the
clustering baseline, baseline + GDS, baseline + GDS-H and SpCL + GDS, and trained on synthm images
alone (USL) with SpCL, the baseline, PPLR, and PPLR with PPLR's or CAP's camera-aware proxies. Prints mAP / Rank-1 of the last epoch, the best mAP, the gain over direct
transfer and the wall time of each run. ``--reuse`` keeps runs whose folder already has a summary.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from uda_reid.config import apply_overrides, find_recipe, load_recipe
from uda_reid.engine.loop import adapt, source_stage_config
from uda_reid.engine.supervised import train_supervised

# name: (recipe, overrides applied on top of it)
RUNS: dict[str, tuple[str, dict[str, Any]]] = {
    "spcl_uda": ("spcl_synthx_to_synthm", {}),
    "spcl_usl": ("spcl_synthx_to_synthm", {"source": None}),
    "baseline": ("baseline_synthx_to_synthm", {}),
    "baseline_gds": ("baseline_synthx_to_synthm", {"gds.enabled": True}),
    "baseline_gds_h": ("gds_synthx_to_synthm", {}),
    "spcl_gds": ("spcl_synthx_to_synthm", {"gds.enabled": True}),
    # unsupervised on synthm from the same source model: the baseline against PPLR (+ camera proxies)
    "baseline_usl": ("baseline_usl_synthm", {}),
    "pplr_usl": ("pplr_usl_synthm", {}),
    "pplr_cam_usl": ("pplr_cam_usl_synthm", {}),
    "pplr_cap_usl": ("pplr_usl_synthm", {"method_options.camera_proxies": "cap"}),
}


def _pick(summary: dict, key: str) -> dict:
    return {k: round(v, 2) for k, v in summary[key].items() if k in ("mAP", "rank1")}


@click.command()
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/bench_synthetic_uda"), show_default=True)
@click.option("--runs", "selected", default=",".join(RUNS), show_default=True, help="Comma-separated subset of the runs.")
@click.option("--reuse", is_flag=True, help="Keep runs (and the source model) already finished in --out.")
@click.option("--seed", type=int, default=None, help="Seed of the adaptation runs (default: the recipes'); the source model keeps its own.")
@click.option("--source-model", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Start every run from this checkpoint instead of training the source stage.")
@click.option("--device", default="auto", show_default=True)
@click.option("--quiet", is_flag=True)
def main(data_root: Path | None, out: Path, selected: str, reuse: bool, seed: int | None, source_model: Path | None,
         device: str, quiet: bool) -> None:
    names = [name.strip() for name in selected.split(",") if name.strip()]
    unknown = sorted(set(names) - set(RUNS))
    if unknown:
        raise click.BadParameter(f"unknown run(s) {', '.join(unknown)}; known: {', '.join(RUNS)}", param_hint="--runs")
    figures: dict[str, Any] = {"seed": seed, "seconds": {}}

    source_config = apply_overrides(load_recipe(find_recipe("spcl_synthx_to_synthm")), {"device": device})
    if source_model is None:
        source_model = out / "source" / "best.pt"
        if not (reuse and source_model.exists()):
            started = time.perf_counter()
            train_supervised(source_stage_config(source_config), out / "source", data_root=data_root, progress=not quiet)
            figures["seconds"]["source_stage"] = round(time.perf_counter() - started, 1)

    for name in names:
        recipe, overrides = RUNS[name]
        run_dir = out / name
        if reuse and (run_dir / "summary.json").exists():
            summary = json.loads((run_dir / "summary.json").read_text())
        else:
            config = apply_overrides(load_recipe(find_recipe(recipe)),
                                     {"device": device, "model.init": str(source_model), **overrides})
            if seed is not None:
                config = apply_overrides(config, {"seed": seed})
            started = time.perf_counter()
            summary = adapt(config, run_dir, data_root=data_root, progress=not quiet)
            figures["seconds"][name] = round(time.perf_counter() - started, 1)
        figures.setdefault("direct_transfer", _pick(summary, "direct_transfer"))
        figures[name] = {**_pick(summary, "last"), "best_mAP": round(summary["best_mAP"], 2)}
        figures[name]["gain_mAP"] = round(figures[name]["mAP"] - figures["direct_transfer"]["mAP"], 2)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
