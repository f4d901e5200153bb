"""The training commands: ``train`` (supervised), ``adapt`` (UDA), ``usl`` and ``pretrain``.

Their options list what is registered (methods, add-on flags, backbones, clusterers, pre-training
methods), so they are built on demand by :class:`~.registered.RegistryCommand`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..config import RunConfig, apply_overrides, find_recipe, load_recipe
from ..errors import ConfigError
from ..recipe_lookup import recipe_folders, recipe_named
from .group import cli
from .options import (
    DATA_ROOT,
    EVAL_ON,
    INIT,
    RUN_CONTROL,
    Opt,
    resolve_config,
    run_on_every_process,
    shared_overrides,
    with_dataset_options,
)
from .registered import (
    RegistryCommand,
    adaptation_methods,
    add_on_options,
    arch_option,
    clusterer_option,
    flag_settings,
    given_add_on_flags,
    method_option,
    pretrain_method_option,
)

#: The method of ``adapt`` / ``usl`` when neither --method nor --recipe names one.
DEFAULT_METHOD = "spcl"
#: The pre-training method when neither --method nor --recipe names one.
DEFAULT_PRETRAINER = "moco"


# --------------------------------------------------------------------------- train
def _train_options() -> list[click.Parameter]:
    return [
        Opt("--recipe", default=None, help="Recipe file or name (see udareid recipes; default: supervised_<dataset> "
                                           "if it exists, else supervised).").build(),
        DATA_ROOT.build(),
        Opt("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
            help="Run folder (default: runs/train_<dataset>).").build(),
        INIT.build(),
        arch_option(),
        Opt("--epochs", type=click.IntRange(min=0), default=None,
            help="Training epochs (train.epochs; default: the recipe's).").build(),
        EVAL_ON.build(),
        *(option.build() for option in RUN_CONTROL),
    ]


@cli.command(cls=RegistryCommand, options=_train_options)
@click.option("--dataset", required=True, help="Labelled dataset to train on (e.g. market1501, synthx).")
def train(dataset, recipe, data_root, out, init, arch, epochs, eval_on, device, precision, dataset_options, seed, resume,
          set_options, quiet, overwrite, no_tensorboard):
    """Supervised training (ID + triplet) on a labelled dataset; stage 1 of UDA."""
    from ..data.datasets import spec_label
    from ..engine.loop import train_supervised

    if recipe is None:
        recipe = f"supervised_{dataset}" if recipe_named(f"supervised_{dataset}") is not None else "supervised"
    overrides = {
        "dataset": dataset,
        "train.epochs": epochs,
        **shared_overrides(init, arch, device, precision, seed, eval_on, no_tensorboard),
    }
    config = resolve_config(recipe, overrides, set_options)
    config = with_dataset_options(config, dataset, dataset_options, [dataset, *config.eval_datasets])
    out = out or Path("runs") / f"train_{spec_label(dataset)}"
    summary = run_on_every_process(train_supervised, config, out, data_root=data_root, resume=resume, quiet=quiet,
                                   overwrite=overwrite)
    if summary is None:
        return
    click.echo(f"run folder: {out}")
    for name, figures in {summary["target"]: summary["last"], **summary.get("also_evaluated", {})}.items():
        click.echo(f"{name:>12}: " + "  ".join(f"{k} {v:5.1f}" for k, v in figures.items()))


# --------------------------------------------------------------------------- adapt / usl
def _adaptation_options() -> list[click.Parameter]:
    """Options shared by ``adapt`` and ``usl``."""
    return [
        method_option(DEFAULT_METHOD),
        Opt("--recipe", default=None, help="Recipe file or name (see udareid recipes; default: chosen from method "
                                           "and datasets).").build(),
        DATA_ROOT.build(),
        Opt("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
            help="Run folder (default: runs/<method>_<datasets>).").build(),
        INIT.build(),
        arch_option(),
        clusterer_option(),
        *add_on_options(),
        Opt("--epochs", type=click.IntRange(min=0), default=None,
            help="Adaptation epochs (adapt.epochs; default: the recipe's).").build(),
        EVAL_ON.build(),
        *(option.build() for option in RUN_CONTROL),
    ]


def default_adapt_recipe(method: str, source: str | None, target: str, *, cameras: bool = False) -> str:
    """``<method>_<source>_to_<target>`` / ``<method>_usl_<target>`` if there is one, else the generic one.

    With camera proxies, ``<method>_cam_...`` comes first: the published camera-aware settings
    change more than the loss (PPLR clusters Market-1501 at eps 0.4 with them).
    """
    specific = f"{source}_to_{target}" if source else f"usl_{target}"
    candidates = ([f"{method}_cam_{specific}"] if cameras else []) + [f"{method}_{specific}"]
    for name in candidates:
        if recipe_named(name) is not None:
            return name
    generic = f"{method}_uda" if source else f"{method}_usl"
    if recipe_named(generic) is None:
        kind = "UDA (adapt)" if source else "USL (usl)"
        folders = ", ".join(str(folder) for folder in recipe_folders())
        raise ConfigError(
            f"no recipe for --method {method} in {kind}: looked for {', '.join(candidates)} and {generic} in "
            f"{folders}; pass --recipe FILE (e.g. a copy of a {method}_* recipe)"
        )
    return generic


def _refuse_add_ons_the_method_is(method: str, given: list[tuple[str, Any, Any]]) -> None:
    """An add-on flag on a method that already is that add-on (camera proxies on CAP) is named before any work."""
    if not given:
        return
    from ..addons import ADD_ONS
    from ..methods import METHODS

    excluded = METHODS.get(method).excludes_add_ons
    for add_on, flag, value in given:
        if add_on not in excluded or not ADD_ONS.get(add_on).enabled(apply_overrides(RunConfig(), flag_settings(flag, value))):
            continue
        as_typed = flag.name if flag.key is None else f"{flag.name} {value}"
        others = [name for name in adaptation_methods() if add_on not in METHODS.get(name).excludes_add_ons]
        raise ConfigError(f"{as_typed}: method {method} already is {add_on.replace('_', ' ')}; drop {flag.name}, "
                          f"or add it to another method (one of: {', '.join(others)})")


def _run_adaptation(source: str | None, target: str, options: dict[str, Any]) -> None:
    from ..data.datasets import canonical_name, spec_label
    from ..engine.loop import adapt as run_adaptation

    given = given_add_on_flags(options)
    method, recipe, set_options = options.pop("method"), options.pop("recipe"), options.pop("set_options")
    source = canonical_name(source) if source else None
    target = canonical_name(target)
    if recipe is not None:  # the recipe says which method it is for
        recipe_method = load_recipe(find_recipe(recipe)).adapt.method
        if method is not None and method != recipe_method:
            raise ConfigError(
                f"--method {method} contradicts --recipe {recipe}, which is a recipe for method {recipe_method}; "
                f"drop --method, or choose a {method} recipe"
            )
        method = recipe_method
    method = method or DEFAULT_METHOD
    _refuse_add_ons_the_method_is(method, given)
    flag_overrides: dict[str, Any] = {}
    for _, flag, value in given:
        flag_overrides.update(flag_settings(flag, value))
    cameras = flag_overrides.get("camera_proxies.mode") not in (None, "off")
    recipe = recipe or default_adapt_recipe(method, source and spec_label(source), spec_label(target), cameras=cameras)
    o = options
    overrides = {
        "source": source,
        "target": target,
        "dataset": target,
        "adapt.method": method,
        "clustering.clusterer": o["clusterer"],
        **flag_overrides,
        "adapt.epochs": o["epochs"],
        **shared_overrides(o["init"], o["arch"], o["device"], o["precision"], o["seed"], o["eval_on"],
                           o["no_tensorboard"]),
    }
    config = resolve_config(recipe, overrides, set_options)
    if source is None:
        config = apply_overrides(config, {"source": None})
    config = with_dataset_options(config, target, o["dataset_options"],
                                  [spec for spec in (config.source, config.target, *config.eval_datasets) if spec])
    label = config.adapt.method
    camera_mode = config.camera_proxies.mode
    if camera_mode != "off":  # run folders named like the recipes: pplr_cam_usl_market1501
        label += "_cam" if camera_mode == "pplr" else f"_{camera_mode}"
    if config.gds.enabled or config.gds.hard_mining:
        label += "_gdsh" if config.gds.hard_mining else "_gds"
    name = f"{label}_{spec_label(source)}_to_{spec_label(target)}" if source else f"{label}_usl_{spec_label(target)}"
    out = o["out"] or Path("runs") / name
    summary = run_on_every_process(run_adaptation, config, out, data_root=o["data_root"], resume=o["resume"],
                                   quiet=o["quiet"], overwrite=o["overwrite"])
    if summary is None:
        return
    click.echo(f"run folder: {out}")
    if summary.get("diagnostics") is not None:  # no query/gallery: what can be said without labels
        figures = summary["diagnostics"]
        click.echo(f"{'last epoch':>10}: " + "  ".join(f"{k} {v:g}" for k, v in figures.items()))
        click.echo(f"{'':>10}  (no query/gallery split, so no mAP; see metrics.png and clusters_epochNNN.png in {out})")
        return
    direct, last = summary["initial"], summary["last"]
    click.echo(f"{'initial':>10}: mAP {direct.get('mAP', float('nan')):5.1f}  rank1 {direct.get('rank1', float('nan')):5.1f}")
    if last:
        click.echo(f"{'adapted':>10}: mAP {last['mAP']:5.1f}  rank1 {last['rank1']:5.1f}  (best mAP {summary['best_mAP']:.1f})")


@cli.command(cls=RegistryCommand, options=_adaptation_options)
@click.option("--source", required=True, help="Labelled source dataset (e.g. personx, market1501, synthx).")
@click.option("--target", required=True, help="Unlabelled target dataset (e.g. market1501, msmt17, synthm).")
def adapt(source, target, **options):
    """Unsupervised domain adaptation: labelled source -> unlabelled target (cluster -> adapt loop)."""
    _run_adaptation(source, target, options)


@cli.command(cls=RegistryCommand, options=_adaptation_options)
@click.option("--dataset", required=True, help="Unlabelled dataset to learn from (e.g. msmt17, synthm).")
def usl(dataset, **options):
    """Unsupervised learning from unlabelled images alone (cluster -> adapt loop)."""
    _run_adaptation(None, dataset, options)


# --------------------------------------------------------------------------- pretrain
def _pretrain_options() -> list[click.Parameter]:
    return [
        pretrain_method_option(DEFAULT_PRETRAINER),
        Opt("--recipe", default=None, help="Recipe file or name (default: <method>_luperson, the paper settings; "
                                           "moco_synthetic / upreid_synthetic are CPU-sized).").build(),
        DATA_ROOT.build(),
        Opt("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
            help="Run folder (default: runs/pretrain_<method>_<data>); it receives backbone.pth.").build(),
        arch_option(),
        Opt("--epochs", type=click.IntRange(min=1), default=None,
            help="Epochs (pretrain.epochs; default: the recipe's).").build(),
        Opt("--eval-on", "eval_on", multiple=True,
            help="Labelled dataset on which to measure the frozen backbone's retrieval mAP (repeatable).").build(),
        *(option.build() for option in RUN_CONTROL),
    ]


@cli.command(cls=RegistryCommand, options=_pretrain_options)
@click.option("--images", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="A folder of unlabelled person images (flat or nested), e.g. LUPerson's.")
@click.option("--dataset", "datasets", multiple=True, help="Or datasets whose train images to use (repeatable: "
                                                           "--dataset synthx --dataset synthm).")
def pretrain(images, datasets, method, recipe, data_root, out, arch, epochs, eval_on, device, precision,
             dataset_options, seed, resume, set_options, quiet, overwrite, no_tensorboard):
    """Self-supervised pre-training of a re-ID backbone on unlabelled images (MoCo v2 / UP-ReID).

    The result, RUN/backbone.pth, starts any run: udareid usl ... --init moco:RUN/backbone.pth.
    """
    from ..data.datasets import canonical_name, spec_label
    from ..engine.pretrain import pretrain as run_pretraining

    if (images is None) == (not datasets):
        raise ConfigError("pretrain needs --images DIR or --dataset NAME (repeatable), not both")
    specs = [f"folder:{images}"] if images is not None else [canonical_name(name) for name in datasets]
    if recipe is not None:
        recipe_method = load_recipe(find_recipe(recipe)).pretrain.method
        if method is not None and method != recipe_method:
            raise ConfigError(f"--method {method} contradicts --recipe {recipe}, a recipe for {recipe_method}; "
                              f"drop --method, or choose a {method} recipe")
    recipe = recipe or f"{method or DEFAULT_PRETRAINER}_luperson"
    overrides = {"pretrain.datasets": specs, "pretrain.method": method, "pretrain.epochs": epochs,
                 **shared_overrides(None, arch, device, precision, seed, eval_on, no_tensorboard)}
    config = resolve_config(recipe, overrides, set_options)
    config = with_dataset_options(config, specs[0], dataset_options, [*specs, *config.eval_datasets])
    out = out or Path("runs") / f"pretrain_{config.pretrain.method}_{'_'.join(spec_label(s) for s in specs)}"
    summary = run_on_every_process(run_pretraining, config, out, data_root=data_root, resume=resume, quiet=quiet,
                                   overwrite=overwrite)
    if summary is None:
        return
    click.echo(f"run folder: {out}")
    figures = summary["last"]
    click.echo("last epoch: " + "  ".join(f"{k} {v:g}" for k, v in figures.items() if isinstance(v, (int, float))))
    click.echo(f"backbone: {summary['backbone']} (start a run with --init {summary['init']})")
