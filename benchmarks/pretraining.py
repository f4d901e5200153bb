"""Does self-supervised pre-training help? Random weights vs MoCo vs UP-ReID (vs DINO) backbones on synthm, as JSON.

    python benchmarks/pretraining.py --seeds 1,2,3 --out runs/bench_pretraining [--pretrain-seed 1] [--reuse]
    python benchmarks/pretraining.py --arch vit_small_ics --arms random,dino --out runs/bench_pretraining_vit

For each pre-training seed, MoCo v2 and UP-ReID pre-train a ResNet-18 on the unlabelled train images of
both synthetic domains (recipes ``moco_synthetic`` / ``upreid_synthetic``). Each backbone, and a random
one, is then judged twice on synthm:

- frozen: retrieval mAP of its features before any training (the USL run's epoch-0 evaluation, as
  ``udareid evaluate --weights moco:...``);
- USL: cluster-contrast on the synthm train images started from it (``cluster_contrast_usl_synthm`` with
  ``lr`` 3.5e-4, the published rate for a self-supervised start, and the extra BN in all three arms).

With ``--arch vit_small_ics`` the arms are transformers (pre-training recipe ``<arm>_synthetic`` on that
arch, ``dino_synthetic`` for DINO) and the USL recipe is ``cluster_contrast_vit_usl_synthm`` as it is.

Prints per arm the per-seed figures, mean ± sample std (n − 1), and for each pair of arms whether the
difference of the means exceeds the sum of their standard deviations. ``--pretrain-seed`` pre-trains
once (with that seed) and starts every seed's USL from it: the frozen figures then have no spread.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import click

from uda_reid.config import apply_overrides, find_recipe, load_recipe, parse_set_options
from uda_reid.engine.loop import adapt
from uda_reid.engine.pretrain import BACKBONE_FILE, pretrain
from uda_reid.models.backbones import is_transformer
from uda_reid.precision import PRECISIONS

ARMS = ("random", "moco", "upreid", "dino")
#: arch family -> (the USL recipe, its overrides for a self-supervised start)
USL = {"convolutional": ("cluster_contrast_usl_synthm", {"optim.lr": 3.5e-4, "model.extra_bn": True}),
       "transformer": ("cluster_contrast_vit_usl_synthm", {})}


def _spread(values: list[float]) -> dict[str, float]:
    return {"mean": round(statistics.fmean(values), 2),
            "std": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0}


def _backbone(arm: str, seed: int, out: Path, settings: dict, data_root, reuse: bool, quiet: bool,
              seconds: dict, arch: str) -> str | None:
    """The init spec of ``arm``'s backbone pre-trained with ``seed`` (None: random weights)."""
    if arm == "random":
        return None
    run_dir = out / f"pretrain_{arm}_seed{seed}"
    if not (reuse and (run_dir / "summary.json").exists()):
        config = apply_overrides(load_recipe(find_recipe(f"{arm}_synthetic")),
                                 {**settings, "seed": seed, "pretrain.datasets": ["synthx", "synthm"],
                                  **_arch_settings(arch)})
        started = time.perf_counter()
        pretrain(config, run_dir, data_root=data_root, progress=not quiet)
        seconds[f"pretrain_{arm}_seed{seed}"] = round(time.perf_counter() - started, 1)
    return f"moco:{run_dir / BACKBONE_FILE}"


def _arch_settings(arch: str) -> dict[str, Any]:
    return {"model.arch": arch, **({"model.pooling": "token"} if is_transformer(arch) else {})}


@click.command()
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of the synthetic domains (default: $UDAREID_DATA, else ~/.cache/udareid/data; generated if missing).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/bench_pretraining"),
              show_default=True, help="Folder of the pre-training and USL runs.")
@click.option("--seeds", default="1,2,3", show_default=True, help="Comma-separated seeds of the USL runs (and of the pre-training).")
@click.option("--pretrain-seed", type=int, default=None, help="Pre-train once with this seed for every USL seed.")
@click.option("--arms", default="random,moco,upreid", show_default=True,
              help="Comma-separated subset of random, moco, upreid, dino.")
@click.option("--arch", default="resnet18", show_default=True,
              help="Backbone of every arm (vit_small_ics: the transformer USL recipe).")
@click.option("--set", "set_options", multiple=True, metavar="KEY=VALUE",
              help="Override a key of the pre-training recipes (e.g. pretrain.epochs=2), for a quick look.")
@click.option("--usl-epochs", type=int, default=None, help="Epochs of the USL runs (default: the recipe's 10).")
@click.option("--reuse", is_flag=True, help="Keep pre-training and USL runs already finished in --out.")
@click.option("--device", default="auto", show_default=True, help="auto (cuda when available, else cpu), cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(list(PRECISIONS)), default="fp32", show_default=True,
              help="Backbone arithmetic of the pre-training and of every USL run.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def main(data_root, out, seeds, pretrain_seed, arms, arch, set_options, usl_epochs, reuse, device, precision,
         quiet) -> None:
    arm_list = [arm.strip() for arm in arms.split(",") if arm.strip()]
    if set(arm_list) - set(ARMS):
        raise click.BadParameter(f"unknown arm(s) {', '.join(sorted(set(arm_list) - set(ARMS)))}; known: "
                                 f"{', '.join(ARMS)}", param_hint="--arms")
    seed_list = [int(seed) for seed in seeds.split(",") if seed.strip()]
    settings = {"device": device, "precision": precision, **parse_set_options(set_options)}
    usl_recipe, usl_overrides = USL["transformer" if is_transformer(arch) else "convolutional"]
    usl_settings = {"device": device, "precision": precision, **usl_overrides, **_arch_settings(arch)}
    if usl_epochs is not None:
        usl_settings.update({"adapt.epochs": usl_epochs, "adapt.eval_every": usl_epochs})
    seconds: dict[str, float] = {}
    frozen: dict[str, dict[int, dict]] = {arm: {} for arm in arm_list}
    usl: dict[str, dict[int, dict]] = {arm: {} for arm in arm_list}
    for seed in seed_list:
        for arm in arm_list:
            pretrained_with = seed if pretrain_seed is None else pretrain_seed
            init = _backbone(arm, pretrained_with, out, settings, data_root, reuse, quiet, seconds, arch)
            run_dir = out / f"seed{seed}" / f"usl_{arm}"
            if reuse and (run_dir / "summary.json").exists():
                summary = json.loads((run_dir / "summary.json").read_text())
            else:
                config = apply_overrides(load_recipe(find_recipe(usl_recipe)),
                                         {**usl_settings, "seed": seed, "model.init": init})
                started = time.perf_counter()
                summary = adapt(config, run_dir, data_root=data_root, progress=not quiet)
                seconds[f"seed{seed}/usl_{arm}"] = round(time.perf_counter() - started, 1)
            frozen[arm][seed] = {k: round(summary["initial"][k], 2) for k in ("mAP", "rank1")}
            usl[arm][seed] = {"mAP": round(summary["last"]["mAP"], 2), "rank1": round(summary["last"]["rank1"], 2),
                              "best_mAP": round(summary["best_mAP"], 2)}
    report: dict[str, Any] = {"seeds": seed_list, "pretrain_seed": pretrain_seed, "std": "sample (n - 1)",
                              "arch": arch, "usl_recipe": usl_recipe, "usl_overrides": usl_overrides, "arms": {}}
    for arm in arm_list:
        report["arms"][arm] = {
            "frozen": {"per_seed": frozen[arm], "mAP": _spread([f["mAP"] for f in frozen[arm].values()])},
            "usl": {"per_seed": usl[arm], "mAP": _spread([f["mAP"] for f in usl[arm].values()])},
        }
    report["beyond_spread"] = {
        f"{stage} {a} vs {b}": abs(report["arms"][a][stage]["mAP"]["mean"] - report["arms"][b][stage]["mAP"]["mean"])
        > report["arms"][a][stage]["mAP"]["std"] + report["arms"][b][stage]["mAP"]["std"]
        for stage in ("frozen", "usl") for i, a in enumerate(arm_list) for b in arm_list[i + 1:]
    }
    report["seconds"] = seconds
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
