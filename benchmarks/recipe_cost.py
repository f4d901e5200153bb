"""What a recipe costs on one GPU: arithmetic, memory, and a time estimate scaled from a measured reference.

    python benchmarks/recipe_cost.py --recipes cluster_contrast_vit_usl_market1501,spcl_ibn_usl_market1501
    udareid bench recipe-cost --recipes ...                 (the same)

For each recipe, counted on this machine (CPU, batch 2, the recipe's image size and model; torch's
FlopCounterMode and the bytes autograd saves for the backward pass):

- FLOPs per image of a training step (forward + backward) and of an extraction (forward, eval mode);
- parameters, and the memory of weights + gradients + optimiser state, plus the activations a
  training batch keeps for its backward pass (the recipe's whole batch on one device);
- the images the recipe processes: training steps (source stage too), feature extraction before every
  clustering, evaluations (the published datasets' sizes, below).

Time on one GPU is estimated from a measured reference computed in the same run: ResNet-50 at 256×128
reached ``--reference-step`` images/s in a full training step, ``--reference-extraction`` images/s
extracting from JPEG files and ``--reference-forward`` in a bare forward pass (defaults: one NVIDIA H200, fp32, docs/results.md "On one H200"), so a model's
step takes its FLOPs / ResNet-50's FLOPs as long, and extraction is bounded by the same loader. That
assumes the same arithmetic efficiency as ResNet-50: an estimate to plan with, not a measurement.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import click
import torch
from torch.utils.flop_counter import FlopCounterMode

from uda_reid.config import RunConfig, apply_overrides, find_recipe, load_recipe
from uda_reid.engine.memory_check import network_footprint
from uda_reid.engine.run_configs import source_stage_config
from uda_reid.methods import build_method

#: name -> (train images, train identities, query, gallery): the published datasets' splits.
DATASETS = {
    "market1501": (12936, 751, 3368, 15913),
    "dukemtmc": (16522, 702, 2228, 17661),
    "msmt17": (32621, 1041, 11659, 82161),
    "personx": (9840, 410, 5136, 30816),
}
REFERENCE = "resnet50"


def _model(config: RunConfig) -> torch.nn.Module:
    """The recipe's network (random weights: the arithmetic is the same), with a 10-class head."""
    method = build_method(config)
    model, _ = method.build_model(dataclasses.replace(config.model, init=None), 10, None)
    return method.prepare_model(model)


def per_image(config: RunConfig) -> dict[str, float]:
    """FLOPs per image of a training step and of an extraction, and the activation bytes per image
    (what the run's own memory check counts: uda_reid.engine.memory_check)."""
    model = _model(config).train()
    images = torch.randn(2, 3, config.data.height, config.data.width)
    with FlopCounterMode(display=False) as train_flops:
        output = model(images)
        tensors = [t for t in (output if isinstance(output, tuple) else (output,)) if isinstance(t, torch.Tensor)]
        sum(t.float().pow(2).mean() for t in tensors if t.requires_grad).backward()
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as eval_flops:
        model(images)
    footprint = network_footprint(model, config.data.height, config.data.width, torch.device("cpu"))
    return {"train_flops": train_flops.get_total_flops() / 2, "eval_flops": eval_flops.get_total_flops() / 2,
            "activation_bytes": footprint.training_bytes_per_image, "parameters": footprint.parameters}


def _stage_images(stage_config: RunConfig, section: str, dataset: str) -> int:
    images, ids = DATASETS[dataset][:2]
    stage = getattr(stage_config, section)
    batch = stage_config.data.batch_size
    if getattr(stage, "passes_per_epoch", 0) > 0:
        iterations = math.floor(stage.passes_per_epoch * images / batch)
    elif stage.iters_per_epoch:
        iterations = stage.iters_per_epoch
    else:
        iterations = math.ceil(ids / (batch // stage_config.data.num_instances))  # one pass over the identities
    return stage.epochs * iterations * batch


def cost(name: str, reference: dict[str, float], step_rate: float, extraction_rate: float,
         forward_rate: float) -> dict[str, Any]:
    config = load_recipe(find_recipe(name))
    figures = per_image(config)
    target = config.target or config.dataset
    if target not in DATASETS:
        raise click.BadParameter(f"{name}: no published size for {target}", param_hint="--recipes")
    train, _, query, gallery = DATASETS[target]
    adapt = config.adapt
    trained = {"adaptation": _stage_images(config, "adapt", target)}
    extracted = adapt.epochs * train  # before every clustering
    evaluations = 1 + (adapt.epochs // adapt.eval_every if adapt.eval_every else 1)
    extracted += evaluations * (query + gallery)
    source_figures = None
    if config.source and adapt.source_pretrain_epochs > 0:
        stage = source_stage_config(config)
        trained["source stage"] = _stage_images(stage, "train", config.source)
        source_figures = per_image(stage)
        s_query, s_gallery = DATASETS[config.source][2:]
        extracted += (stage.train.epochs // max(stage.train.eval_every, 1)) * (s_query + s_gallery)
    step_seconds_per_flop = 1.0 / (step_rate * reference["train_flops"])
    seconds = trained["adaptation"] * figures["train_flops"] * step_seconds_per_flop
    if source_figures is not None:
        seconds += trained["source stage"] * source_figures["train_flops"] * step_seconds_per_flop
    # extraction: the loader's rate, or the model's when it is the slower (ResNet-50's bare forward, scaled)
    seconds += extracted * max(1.0 / extraction_rate, figures["eval_flops"] / (reference["eval_flops"] * forward_rate))
    optimiser_states = 2 if config.optim.optimizer.startswith("adam") else 1
    state_gib = figures["parameters"] * 4 * (2 + optimiser_states) / 2**30
    activation_gib = figures["activation_bytes"] * config.data.batch_size / 2**30
    return {
        "recipe": name, "arch": config.model.arch, "image": f"{config.data.height}x{config.data.width}",
        "gflops_per_image": {"train_step": round(figures["train_flops"] / 1e9, 2),
                             "extraction": round(figures["eval_flops"] / 1e9, 2)},
        "parameters_M": round(figures["parameters"] / 1e6, 1),
        "images": {"trained": trained, "extracted_or_evaluated": extracted},
        "memory_GiB": {"weights_grads_optimiser": round(state_gib, 2),
                       f"activations_batch_{config.data.batch_size}": round(activation_gib, 1),
                       "total": round(state_gib + activation_gib, 1)},
        "estimated_hours_one_gpu": round(seconds / 3600, 1),
    }


@click.command()
@click.option("--recipes", required=True, help="Comma-separated recipe names (their target must be a published dataset).")
@click.option("--reference-step", type=float, default=1742.0, show_default=True,
              help="Measured ResNet-50 256x128 training-step rate, images/s (one H200, fp32).")
@click.option("--reference-extraction", type=float, default=1638.0, show_default=True,
              help="Measured ResNet-50 extraction rate from JPEG files, images/s (one H200, fp32).")
@click.option("--reference-forward", type=float, default=6744.0, show_default=True,
              help="Measured ResNet-50 bare forward rate on images in memory, images/s (one H200, fp32).")
def main(recipes: str, reference_step: float, reference_extraction: float, reference_forward: float) -> None:
    reference = per_image(apply_overrides(RunConfig(), {"model.arch": REFERENCE, "target": "market1501",
                                                        "data.normalization": "imagenet"}))
    report = {"reference": {"arch": REFERENCE, "gflops_train_step": round(reference["train_flops"] / 1e9, 2),
                            "gflops_extraction": round(reference["eval_flops"] / 1e9, 2),
                            "step_images_per_s": reference_step, "extraction_images_per_s": reference_extraction},
              "recipes": [cost(name.strip(), reference, reference_step, reference_extraction, reference_forward)
                          for name in recipes.split(",") if name.strip()]}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
