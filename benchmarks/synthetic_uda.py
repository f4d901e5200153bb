"""Synthetic UDA benchmark: direct transfer vs SpCL adaptation vs USL, synthx -> synthm, as JSON.

    python benchmarks/synthetic_uda.py --out runs/bench_synthetic_uda [--data-root DIR]

One supervised source model (the recipe's source stage) is the shared starting point: evaluated
on synthm as is (direct transfer), adapted with SpCL (UDA: synthx labels + synthm images), and
trained on synthm images alone (USL). Prints mAP / Rank-1 of each and the wall time of each stage.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import click

from uda_reid.config import apply_overrides, find_recipe, load_recipe
from uda_reid.engine.loop import adapt


@click.command()
@click.option("--recipe", default="spcl_synthx_to_synthm", show_default=True)
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/bench_synthetic_uda"), show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--quiet", is_flag=True)
def main(recipe: str, data_root: Path | None, out: Path, device: str, quiet: bool) -> None:
    config = apply_overrides(load_recipe(find_recipe(recipe)), {"device": device})
    figures: dict = {"recipe": recipe, "seconds": {}}

    started = time.perf_counter()
    uda = adapt(config, out / "uda", data_root=data_root, progress=not quiet)
    figures["seconds"]["source_stage_plus_uda"] = round(time.perf_counter() - started, 1)
    source_model = out / "uda" / "source_pretrain" / "best.pt"

    started = time.perf_counter()
    usl_config = dataclasses.replace(
        config, source=None, model=dataclasses.replace(config.model, init=str(source_model))
    )
    usl = adapt(usl_config, out / "usl", data_root=data_root, progress=not quiet)
    figures["seconds"]["usl"] = round(time.perf_counter() - started, 1)

    def pick(summary: dict, key: str) -> dict:
        return {k: round(v, 2) for k, v in summary[key].items() if k in ("mAP", "rank1")}

    figures["direct_transfer"] = pick(uda, "direct_transfer")
    figures["spcl_uda"] = {**pick(uda, "last"), "best_mAP": round(uda["best_mAP"], 2)}
    figures["spcl_usl"] = {**pick(usl, "last"), "best_mAP": round(usl["best_mAP"], 2)}
    figures["uda_gain_mAP"] = round(figures["spcl_uda"]["mAP"] - figures["direct_transfer"]["mAP"], 2)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
