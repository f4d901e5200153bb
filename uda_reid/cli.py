"""The ``udareid`` command line.

Each command is a thin layer: parse options, build a ``RunConfig`` (recipe, then flags), call
the library. Errors caused by user input (``UdaReidError``) are printed as one clear line, not
as a traceback.

``train``, ``adapt`` and ``usl`` also run under torchrun (``torchrun --nproc_per_node=G -m
uda_reid.cli adapt ...``): each process joins the process group once, runs the command, and
only rank 0 prints and writes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from .config import PRECISIONS, RunConfig, apply_overrides, find_recipe, load_recipe, parse_set_options
from .errors import ConfigError, UdaReidError


class _Group(click.Group):
    """Turns faults in the user's input or environment into click's one-line ``Error: ...`` and exit
    code 1: UdaReidError (also when raised inside a DataLoader worker) and OSError (a read-only or
    full disk, a file where a folder should be). Programming errors keep their traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UdaReidError as error:
            raise click.ClickException(user_message(error)) from None
        except OSError as error:
            raise click.ClickException(os_error_message(error)) from None


def user_message(error: Exception) -> str:
    """The error's own message; for one re-raised by a DataLoader worker ("Caught ImageReadError in
    DataLoader worker process 0. Original Traceback ..."), the original one line."""
    message = str(error)
    if "Original Traceback" not in message:
        return message
    last = [line for line in message.splitlines() if line.strip()][-1]
    kind, sep, text = last.partition(": ")
    return text if sep and kind.rsplit(".", 1)[-1] == type(error).__name__ else last


def os_error_message(error: OSError) -> str:
    """``PATH: reason`` of a failed file operation, with what to do about the usual causes."""
    where = error.filename if error.filename is not None else ""
    reason = error.strerror or str(error)
    import errno

    hint = {
        errno.EROFS: "the file system is read-only; choose another --out / --data-root",
        errno.EACCES: "no permission to write there; choose another --out / --data-root",
        errno.ENOSPC: "the disk is full; free space or choose another --out",
        errno.ENOTDIR: "a file is in the way where a folder is needed",
        errno.EEXIST: "a file is in the way where a folder is needed",
    }.get(error.errno or 0)
    message = f"{where}: {reason}" if where else reason
    return f"{message} ({hint})" if hint else message


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="uda_reid")
def cli() -> None:
    """Unsupervised person re-identification: UDA and USL with a cluster -> adapt loop."""


# --------------------------------------------------------------------------- shared options
def _data_root_option(f):
    return click.option(
        "--data-root",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Folder holding the datasets (default: $UDAREID_DATA, else ~/.cache/udareid/data).",
    )(f)


def _device_option(f):
    return click.option(
        "--device", default=None, help="auto (cuda when available, else cpu), cpu, cuda or cuda:N."
    )(f)


def _precision_option(f):
    return click.option(
        "--precision", type=click.Choice(list(PRECISIONS)), default=None,
        help="Backbone arithmetic: fp32, bf16 (CPUs with AVX-512 BF16/AMX, recent GPUs), fp16 (GPUs, with loss "
             "scaling) or auto (fp16 on GPUs, bf16 where the CPU has it, else fp32). Losses, memories and "
             "checkpoints stay float32. Default: the recipe's (fp32).",
    )(f)


def _dataset_option(f):
    return click.option(
        "--dataset-option", "dataset_options", multiple=True, metavar="[NAME.]KEY=VALUE",
        help="A dataset's own option, saved in the run's config (so --resume and evaluate find the same data): "
             "camera_regex=REGEX or none (folder), variant=detected (cuhk03). Without NAME. it is the target's "
             "(train / evaluate: the --dataset's).",
    )(f)


def _run_control_options(f):
    """Device, precision, dataset options, seed, resume, --set and --quiet: every training command's last options."""
    options = [
        _device_option,
        _precision_option,
        _dataset_option,
        click.option("--seed", type=click.IntRange(min=0), default=None, help="Random seed (default: the recipe's)."),
        click.option("--resume", is_flag=True, help="Continue the run in --out from its last.pt."),
        click.option("--set", "set_options", multiple=True, metavar="KEY=VALUE",
                     help="Override any recipe key, e.g. --set optim.lr=1e-4 --set clustering.eps=0.5."),
        click.option("--quiet", is_flag=True, help="No progress bars."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _with_dataset_options(config: RunConfig, default_spec: str, pairs: tuple[str, ...], specs: list[str]) -> RunConfig:
    """``config`` with ``--dataset-option`` pairs merged into ``dataset_options``, each checked against
    the dataset it names (before any work, so a typo costs nothing)."""
    import dataclasses

    from .data.datasets import canonical_name, checked_options, split_spec

    merged = {name: dict(values) for name, values in config.dataset_options.items()}
    for key, value in parse_set_options(pairs, "--dataset-option").items():
        prefix, _, option = key.rpartition(".")
        name = split_spec(canonical_name(prefix))[0] if prefix else split_spec(default_spec)[0]
        merged.setdefault(name, {})[option] = value
    for spec in specs:  # every dataset the run reads, with the options it will get
        checked_options(spec, merged.get(split_spec(spec)[0], {}))
    return dataclasses.replace(config, dataset_options=merged)


def _resolve_config(recipe: str, overrides: dict[str, Any], set_options: tuple[str, ...]) -> RunConfig:
    """Recipe file, then the explicit flags, then ``--set key=value`` pairs."""
    config = load_recipe(find_recipe(recipe))
    config = apply_overrides(config, {k: v for k, v in overrides.items() if v is not None}, "option")
    return apply_overrides(config, parse_set_options(set_options), "--set")


def _shared_overrides(init, arch, device, precision, seed, eval_on) -> dict[str, Any]:
    """The flags every training command shares, as dotted config keys (None = keep the recipe's)."""
    return {
        "model.init": init,
        "model.arch": arch,
        "device": device,
        "precision": precision,
        "seed": seed,
        "eval_datasets": list(eval_on) if eval_on else None,
    }


def _prepare_run_dir(out: Path, resume: bool) -> None:
    """Never silently overwrite or half-reuse an earlier run: a folder where a run started (its
    ``config.yaml``) is continued with --resume, or left alone."""
    started = (out / "config.yaml").exists() or (out / "last.pt").exists()
    if resume:
        if not started:
            raise ConfigError(f"--resume: {out} holds no run to resume (no config.yaml or last.pt)")
        return
    if started:
        raise ConfigError(
            f"--out {out} already holds a run; pass --resume to continue it or choose another --out"
        )


def _run_on_every_process(run, config: RunConfig, out: Path, *, data_root, resume: bool, quiet: bool):
    """``run(config, out, ...)`` on every torchrun process (or the one process); its summary on rank 0,
    None on the others (which print nothing)."""
    from .distributed import distributed_session

    with distributed_session(config.device) as dist:
        _prepare_run_dir(out, resume)
        summary = run(config, out, data_root=data_root, resume=resume, progress=not quiet, dist=dist)
        return summary if dist.is_main else None


# --------------------------------------------------------------------------- train
@cli.command()
@click.option("--dataset", required=True, help="Labelled dataset to train on (e.g. market1501, synthx).")
@click.option("--recipe", default=None, help="Recipe file or name in recipes/ (default: supervised_<dataset> if it exists, else supervised).")
@_data_root_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None, help="Run folder (default: runs/train_<dataset>).")
@click.option("--init", default=None, help="Initial weights: imagenet (torchvision's, downloaded once into the torch cache), imagenet:PATH, lup:PATH, upreid:PATH, moco:PATH (udareid pretrain's backbone.pth) or a uda_reid checkpoint.")
@click.option("--arch", default=None, help="Backbone (resnet18, resnet34, resnet50, resnet101).")
@click.option("--epochs", type=click.IntRange(min=0), default=None, help="Training epochs (train.epochs; default: the recipe's).")
@click.option("--eval-on", "eval_on", multiple=True, help="Also evaluate the final model on this dataset (repeatable).")
@_run_control_options
def train(dataset, recipe, data_root, out, init, arch, epochs, eval_on, device, precision, dataset_options, seed, resume,
          set_options, quiet):
    """Supervised training (ID + triplet) on a labelled dataset; stage 1 of UDA."""
    from .config import recipes_dir
    from .data.datasets import spec_label
    from .engine.loop import train_supervised

    if recipe is None:
        recipe = f"supervised_{dataset}" if (recipes_dir() / f"supervised_{dataset}.yaml").exists() else "supervised"
    overrides = {
        "dataset": dataset,
        "train.epochs": epochs,
        **_shared_overrides(init, arch, device, precision, seed, eval_on),
    }
    config = _resolve_config(recipe, overrides, set_options)
    config = _with_dataset_options(config, dataset, dataset_options, [dataset, *config.eval_datasets])
    out = out or Path("runs") / f"train_{spec_label(dataset)}"
    summary = _run_on_every_process(train_supervised, config, out, data_root=data_root, resume=resume, quiet=quiet)
    if summary is None:
        return
    click.echo(f"run folder: {out}")
    for name, figures in {summary["target"]: summary["last"], **summary.get("also_evaluated", {})}.items():
        click.echo(f"{name:>12}: " + "  ".join(f"{k} {v:5.1f}" for k, v in figures.items()))


# --------------------------------------------------------------------------- adapt / usl
def _adaptation_options(f):
    """Options shared by ``adapt`` and ``usl``."""
    options = [
        click.option("--method", default=None, help="spcl, baseline, pplr, cap or cluster_contrast (default: the --recipe's method, else spcl)."),
        click.option("--recipe", default=None, help="Recipe file or name in recipes/ (default: chosen from method and datasets)."),
        _data_root_option,
        click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None, help="Run folder (default: runs/<method>_<datasets>)."),
        click.option("--init", default=None, help="Initial weights: imagenet (torchvision's, downloaded once into the torch cache), imagenet:PATH, lup:PATH, upreid:PATH, moco:PATH (udareid pretrain's backbone.pth) or a uda_reid checkpoint."),
        click.option("--arch", default=None, help="Backbone (resnet18, resnet34, resnet50, resnet101)."),
        click.option("--clusterer", type=click.Choice(["dbscan", "hdbscan", "kmeans"]), default=None, help="Clustering of the Jaccard distance (clustering.clusterer; default: the recipe's)."),
        click.option("--gds", is_flag=True, default=None, help="Add the GDS term (global distance-distribution separation) to the method's losses."),
        click.option("--gds-hard", "gds_hard", is_flag=True, default=None, help="GDS with its distribution-based hard mining (GDS-H)."),
        click.option("--camera-proxies", "camera_proxies", type=click.Choice(["cap", "pplr", "off"]), default=None,
                     help="Add camera-aware proxy losses to the method (an add-on, any method but cap): CAP's losses or PPLR's inter-camera loss, or off."),
        click.option("--epochs", type=click.IntRange(min=0), default=None, help="Adaptation epochs (adapt.epochs; default: the recipe's)."),
        click.option("--eval-on", "eval_on", multiple=True, help="Also evaluate the final model on this dataset (repeatable)."),
        _run_control_options,
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _default_adapt_recipe(method: str, source: str | None, target: str, *, cameras: bool = False) -> str:
    """``<method>_<source>_to_<target>`` / ``<method>_usl_<target>`` if shipped, else the generic one.

    With camera proxies, ``<method>_cam_...`` comes first: the published camera-aware settings
    change more than the loss (PPLR clusters Market-1501 at eps 0.4 with them).
    """
    from .config import recipes_dir

    specific = f"{source}_to_{target}" if source else f"usl_{target}"
    candidates = ([f"{method}_cam_{specific}"] if cameras else []) + [f"{method}_{specific}"]
    for name in candidates:
        if (recipes_dir() / f"{name}.yaml").exists():
            return name
    generic = f"{method}_uda" if source else f"{method}_usl"
    if not (recipes_dir() / f"{generic}.yaml").exists():
        kind = "UDA (adapt)" if source else "USL (usl)"
        raise ConfigError(
            f"no recipe for --method {method} in {kind}: looked for {', '.join(candidates)} and {generic} in "
            f"{recipes_dir()}; pass --recipe FILE (e.g. a copy of a {method}_* recipe)"
        )
    return generic


def _run_adaptation(source, target, method, recipe, data_root, out, init, arch, clusterer, gds, gds_hard,
                    camera_proxies, epochs, eval_on, device, precision, dataset_options, seed, resume, set_options, quiet):
    from .data.datasets import canonical_name, spec_label
    from .engine.loop import adapt as run_adaptation

    source = canonical_name(source) if source else None
    target = canonical_name(target)
    from .methods import METHODS

    if method is not None:
        METHODS.get(method)  # an unknown --method is named before any recipe is looked up
    if recipe is not None:  # the recipe says which method it is for
        recipe_method = load_recipe(find_recipe(recipe)).adapt.method
        if method is not None and method != recipe_method:
            raise ConfigError(
                f"--method {method} contradicts --recipe {recipe}, which is a recipe for method {recipe_method}; "
                f"drop --method, or choose a {method} recipe"
            )
        method = recipe_method
    method = method or "spcl"
    if camera_proxies not in (None, "off") and "camera_proxies" in METHODS.get(method).excludes_add_ons:
        raise ConfigError(f"--camera-proxies {camera_proxies}: method {method} already is camera-aware proxies; "
                          f"drop --camera-proxies, or add them to another method (e.g. --method pplr)")
    recipe = recipe or _default_adapt_recipe(method, source and spec_label(source), spec_label(target),
                                             cameras=camera_proxies not in (None, "off"))
    overrides = {
        "source": source,
        "target": target,
        "dataset": target,
        "adapt.method": method,
        "clustering.clusterer": clusterer,
        "gds.enabled": True if gds or gds_hard else None,
        "gds.hard_mining": True if gds_hard else None,
        "camera_proxies.mode": camera_proxies,
        "adapt.epochs": epochs,
        **_shared_overrides(init, arch, device, precision, seed, eval_on),
    }
    config = _resolve_config(recipe, overrides, set_options)
    if source is None:
        config = apply_overrides(config, {"source": None})
    config = _with_dataset_options(config, target, dataset_options,
                                   [spec for spec in (config.source, config.target, *config.eval_datasets) if spec])
    label = config.adapt.method
    cameras = config.camera_proxies.mode
    if cameras != "off":  # run folders named like the recipes: pplr_cam_usl_market1501
        label += "_cam" if cameras == "pplr" else f"_{cameras}"
    if config.gds.enabled or config.gds.hard_mining:
        label += "_gdsh" if config.gds.hard_mining else "_gds"
    name = f"{label}_{spec_label(source)}_to_{spec_label(target)}" if source else f"{label}_usl_{spec_label(target)}"
    out = out or Path("runs") / name
    summary = _run_on_every_process(run_adaptation, config, out, data_root=data_root, resume=resume, quiet=quiet)
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


@cli.command()
@click.option("--source", required=True, help="Labelled source dataset (e.g. personx, market1501, synthx).")
@click.option("--target", required=True, help="Unlabelled target dataset (e.g. market1501, msmt17, synthm).")
@_adaptation_options
def adapt(source, target, **options):
    """Unsupervised domain adaptation: labelled source -> unlabelled target (cluster -> adapt loop)."""
    _run_adaptation(source, target, **options)


@cli.command()
@click.option("--dataset", required=True, help="Unlabelled dataset to learn from (e.g. msmt17, synthm).")
@_adaptation_options
def usl(dataset, **options):
    """Unsupervised learning from unlabelled images alone (cluster -> adapt loop)."""
    _run_adaptation(None, dataset, **options)


def _trained_model_options(f):
    """--weights, --arch, --device, --precision and --set: the options of every command that uses a model."""
    f = click.option("--set", "set_options", multiple=True, metavar="KEY=VALUE",
                     help="Override a setting of the checkpoint's config, e.g. --set data.eval_batch_size=64.")(f)
    f = _precision_option(_device_option(f))
    f = click.option("--arch", default="resnet50", show_default=True,
                     help="Backbone, for weights that are not a uda_reid checkpoint.")(f)
    return click.option("--weights", required=True, help="A uda_reid checkpoint (best.pt / last.pt), or imagenet / "
                        "imagenet:PATH / lup:PATH / upreid:PATH / moco:PATH with --arch.")(f)


def _trained_model(weights: str, arch: str, set_options: tuple[str, ...], device: str | None, precision: str | None,
                   recipe: str | None = None):
    """(model on its device in the run's precision, the config it was trained with + --recipe / --set, the device)."""
    from .device import resolve_device
    from .models.factory import model_from_weights
    from .precision import resolve_precision

    model, config = model_from_weights(weights, arch)
    if recipe is not None:
        config = load_recipe(find_recipe(recipe), base=config)
    config = apply_overrides(config, parse_set_options(set_options), "--set")
    torch_device = resolve_device(device or "auto")
    model = model.to(torch_device)
    model.compute_dtype = resolve_precision(precision or config.precision, torch_device).dtype
    return model, config, torch_device


# --------------------------------------------------------------------------- pretrain
@cli.command()
@click.option("--images", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="A folder of unlabelled person images (flat or nested), e.g. LUPerson's.")
@click.option("--dataset", "datasets", multiple=True, help="Or datasets whose train images to use (repeatable: "
                                                           "--dataset synthx --dataset synthm).")
@click.option("--method", type=click.Choice(["moco", "upreid"]), default=None,
              help="moco: MoCo v2 as LUPerson; upreid: UP-ReID's consistency + intrinsic contrastive losses. "
                   "Default: the recipe's (moco).")
@click.option("--recipe", default=None, help="Recipe file or name (default: <method>_luperson, the paper settings; "
                                             "moco_synthetic / upreid_synthetic are CPU-sized).")
@_data_root_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder (default: runs/pretrain_<method>_<data>); it receives backbone.pth.")
@click.option("--arch", default=None, help="Backbone (resnet18, resnet34, resnet50, resnet101).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Epochs (pretrain.epochs; default: the recipe's).")
@click.option("--eval-on", "eval_on", multiple=True,
              help="Labelled dataset on which to measure the frozen backbone's retrieval mAP (repeatable).")
@_run_control_options
def pretrain(images, datasets, method, recipe, data_root, out, arch, epochs, eval_on, device, precision,
             dataset_options, seed, resume, set_options, quiet):
    """Self-supervised pre-training of a re-ID backbone on unlabelled images (MoCo v2 / UP-ReID).

    The result, RUN/backbone.pth, starts any run: udareid usl ... --init moco:RUN/backbone.pth.
    """
    from .data.datasets import canonical_name, spec_label
    from .engine.pretrain import pretrain as run_pretraining

    if (images is None) == (not datasets):
        raise ConfigError("pretrain needs --images DIR or --dataset NAME (repeatable), not both")
    specs = [f"folder:{images}"] if images is not None else [canonical_name(name) for name in datasets]
    if recipe is not None:
        recipe_method = load_recipe(find_recipe(recipe)).pretrain.method
        if method is not None and method != recipe_method:
            raise ConfigError(f"--method {method} contradicts --recipe {recipe}, a recipe for {recipe_method}; "
                              f"drop --method, or choose a {method} recipe")
    recipe = recipe or f"{method or 'moco'}_luperson"
    overrides = {"pretrain.datasets": specs, "pretrain.method": method, "pretrain.epochs": epochs,
                 **_shared_overrides(None, arch, device, precision, seed, eval_on)}
    config = _resolve_config(recipe, overrides, set_options)
    config = _with_dataset_options(config, specs[0], dataset_options, [*specs, *config.eval_datasets])
    out = out or Path("runs") / f"pretrain_{config.pretrain.method}_{'_'.join(spec_label(s) for s in specs)}"
    summary = _run_on_every_process(run_pretraining, config, out, data_root=data_root, resume=resume, quiet=quiet)
    if summary is None:
        return
    click.echo(f"run folder: {out}")
    figures = summary["last"]
    click.echo("last epoch: " + "  ".join(f"{k} {v:g}" for k, v in figures.items() if isinstance(v, (int, float))))
    click.echo(f"backbone: {summary['backbone']} (start a run with --init {summary['init']})")


# --------------------------------------------------------------------------- evaluate
@cli.command()
@click.option("--dataset", required=True, help="Dataset whose query/gallery split is evaluated.")
@_trained_model_options
@click.option("--recipe", default=None, help="Recipe for image size and normalisation (default: the checkpoint's own config).")
@_data_root_option
@_dataset_option
@click.option("--rerank", is_flag=True, help="k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def evaluate(dataset, weights, arch, recipe, data_root, device, precision, dataset_options, rerank, as_json, set_options,
             quiet):
    """mAP and Rank-1/5/10 of a model on a dataset's query/gallery (Market protocol)."""
    from .data.datasets import load_dataset, options_for
    from .evaluation.protocol import evaluate_model

    model, config, torch_device = _trained_model(weights, arch, set_options, device, precision, recipe)
    config = _with_dataset_options(config, dataset, dataset_options, [dataset])
    data = load_dataset(dataset, data_root, **options_for(dataset, config.dataset_options))
    reranker = None
    if rerank:
        from .evaluation.rerank import re_rank_chunks

        reranker = re_rank_chunks
    figures = evaluate_model(model, data, config.data, device=torch_device, progress=not quiet, rerank=reranker)
    if as_json:
        click.echo(json.dumps({"dataset": data.name, "weights": str(weights), "rerank": rerank, **figures}))
    else:
        click.echo(f"{data.name}: " + "  ".join(f"{k} {v:.1f}" for k, v in figures.items()))


# --------------------------------------------------------------------------- extract
@cli.command()
@_trained_model_options
@click.option("--images", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="A folder of images (flat or nested); camera ids from the names as the folder dataset reads them.")
@click.option("--dataset", default=None, help="Or a dataset (market1501, synthm, folder:DIR, ...): its --split.")
@click.option("--split", type=click.Choice(["train", "query", "gallery", "all"]), default="all", show_default=True,
              help="Which split of --dataset (all: train, then query, then gallery).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="features.npy (+ features.npy.index.tsv: row, path, pid, camid; memory stays one batch) or features.npz.")
@_data_root_option
@_dataset_option
@click.option("--quiet", is_flag=True, help="No progress bar.")
def extract(weights, images, dataset, split, out, arch, data_root, device, precision, dataset_options, set_options, quiet):
    """L2-normalised features of images, with their paths (and ids and cameras when known)."""
    from .data.datasets import load_dataset, options_for
    from .models.features import write_features

    if (images is None) == (dataset is None):
        raise ConfigError("extract needs exactly one of --images DIR and --dataset NAME")
    model, config, torch_device = _trained_model(weights, arch, set_options, device, precision)
    spec = f"folder:{images}" if images is not None else dataset
    config = _with_dataset_options(config, spec, dataset_options, [spec])
    data = load_dataset(spec, data_root, **options_for(spec, config.dataset_options))
    samples = {"train": data.train, "query": data.query, "gallery": data.gallery,
               "all": [*data.train, *data.query, *data.gallery]}[split]
    if not samples:
        raise ConfigError(f"{data.name} ({data.root}) has no images in split {split!r}")
    write_features(model, samples, config.data, out, device=torch_device, progress=not quiet)
    index = "" if out.suffix == ".npz" else f" and {out.name}.index.tsv"
    click.echo(f"{len(samples)} images of {data.name} ({split}) -> {out}{index}")


# --------------------------------------------------------------------------- search
@cli.command()
@_trained_model_options
@click.option("--query", type=click.Path(exists=True, path_type=Path), default=None,
              help="One image, or a folder of images (flat or nested), to search for.")
@click.option("--gallery", type=click.Path(exists=True, path_type=Path), default=None,
              help="A folder of images, or their features written by `udareid extract` (.npy with its .index.tsv, "
                   "or .npz) with these same weights.")
@click.option("--dataset", default=None, help="Or a labelled dataset (synthm, market1501, ...): its query split "
                                             "searched in its gallery split, borders green/red by identity.")
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True, help="Matches per query.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for ranked_lists.json and one picture per query.")
@_data_root_option
@_dataset_option
@click.option("--quiet", is_flag=True, help="No progress bars.")
def search(weights, query, gallery, dataset, top, out, arch, data_root, device, precision, dataset_options,
           set_options, quiet):
    """Each query's nearest gallery images, as pictures (query, then its top K) and as JSON."""
    from .data.datasets import load_dataset, options_for
    from .data.layouts import IMAGE_EXTENSIONS, UNLABELED_PID, Sample
    from .evaluation.search import write_ranked_lists
    from .models.features import extract_features, read_features

    if dataset is not None and (query is not None or gallery is not None):
        raise ConfigError("search takes either --dataset NAME or --query and --gallery, not both")
    if dataset is None and (query is None or gallery is None):
        raise ConfigError("search needs --query IMG|DIR and --gallery DIR|FEATURES (or --dataset NAME)")
    model, config, torch_device = _trained_model(weights, arch, set_options, device, precision)
    folders = [f"folder:{p}" for p in (query, gallery) if p is not None and p.is_dir()]
    config = _with_dataset_options(config, dataset or "folder", dataset_options, [dataset] if dataset else folders)

    def images_of(spec: str) -> list[Sample]:
        return load_dataset(spec, data_root, **options_for(spec, config.dataset_options)).train

    if dataset is not None:
        data = load_dataset(dataset, data_root, **options_for(dataset, config.dataset_options))
        if not data.query or not data.gallery:
            raise ConfigError(f"--dataset {dataset}: {data.root} has no query/gallery split to search")
        query_samples, gallery_samples, gallery_features = data.query, data.gallery, None
    else:
        if query.is_file() and query.suffix.lower() not in IMAGE_EXTENSIONS:
            raise ConfigError(f"--query {query}: expected an image ({'/'.join(IMAGE_EXTENSIONS)}) or a folder of images")
        query_samples = images_of(f"folder:{query}") if query.is_dir() else [Sample(str(query), UNLABELED_PID, 0)]
        if gallery.is_dir():
            gallery_samples, gallery_features = images_of(f"folder:{gallery}"), None
        else:
            gallery_features, gallery_samples = read_features(gallery)
    extract = dict(device=torch_device, progress=not quiet)
    query_features = extract_features(model, query_samples, config.data, desc="query features", **extract)
    if gallery_features is None:
        gallery_features = extract_features(model, gallery_samples, config.data, desc="gallery features", **extract).numpy()
    elif gallery_features.shape[1] != query_features.shape[1]:
        raise ConfigError(f"--gallery {gallery}: features of size {gallery_features.shape[1]}, but these weights give "
                          f"{query_features.shape[1]}; extract the gallery with the same --weights")
    about = {"weights": str(weights), "query": str(query or f"{dataset} query"),
             "gallery": str(gallery or f"{dataset} gallery")}
    result = write_ranked_lists(query_samples, query_features, gallery_samples, gallery_features, top, out,
                                progress=not quiet, about=about)
    click.echo(f"{len(query_samples)} queries searched in {len(gallery_samples)} gallery images -> "
               f"{out / 'ranked_lists.json'} and {len(query_samples)} pictures")
    if result["first_match_same_id"] is not None:
        click.echo(f"first match has the query's identity for {100 * result['first_match_same_id']:.1f}% of the queries "
                   f"(the protocol's Rank-1: same-identity images of the query's own camera were left out)")


# --------------------------------------------------------------------------- export
@cli.command()
@click.option("--weights", required=True, help="A uda_reid checkpoint (best.pt / last.pt), or imagenet / imagenet:PATH / lup:PATH / upreid:PATH / moco:PATH with --arch.")
@click.option("--format", "fmt", required=True, type=click.Choice(["torchscript", "pt2", "onnx"]),
              help="torchscript (torch.jit.load, also C++), pt2 (torch.export.load) or onnx (onnxruntime, TensorRT, "
                   "OpenVINO; needs pip install 'uda_reid[onnx]').")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The model file; its input and normalisation are described in <out>.json next to it.")
@click.option("--arch", default="resnet50", show_default=True, help="Backbone, for weights that are not a uda_reid checkpoint.")
@click.option("--set", "set_options", multiple=True, metavar="KEY=VALUE",
              help="Override a setting of the checkpoint's config, e.g. --set data.height=384.")
def export(weights, fmt, out, arch, set_options):
    """A model file mapping a batch of images to L2-normalised features.

    Input: float32 N×3×H×W, RGB in [0, 1], resized to the run's H×W; the mean/std normalisation is
    inside the model. Output: N×D features; rank by squared Euclidean distance.
    """
    from .models.export import export_model
    from .models.factory import model_from_weights

    model, config = model_from_weights(weights, arch)
    config = apply_overrides(config, parse_set_options(set_options), "--set")
    about = {"weights": str(weights), "arch": config.model.arch}
    path, sidecar = export_model(model, config.data, fmt, out, feature_dim=model.feature_dim, about=about)
    click.echo(f"{fmt} model -> {path}: images float32 N×3×{config.data.height}×{config.data.width}, RGB in [0, 1] "
               f"({config.data.normalization} normalisation inside) -> N×{model.feature_dim} L2-normalised features; "
               f"described in {sidecar}")


@cli.command("plot-distances")
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False, exists=True, path_type=Path), help="A run folder of udareid adapt / usl / train.")
@click.option("--checkpoint", type=click.Choice(["last", "best"]), default="last", show_default=True, help="Which checkpoint of the run to read.")
@_data_root_option
@_device_option
@click.option("--quiet", is_flag=True, help="No progress bars.")
def plot_distances(run_dir, checkpoint, data_root, device, quiet):
    """Histograms of positive vs negative pair distances on the run's target train and test splits.

    Writes distances.png and distances.json into the run folder (GDS runs write them at the end).
    """
    from .data.datasets import load_dataset, options_for
    from .device import resolve_device
    from .evaluation.distances import dataset_histograms, save_histograms
    from .models.factory import model_from_weights

    weights = run_dir / f"{checkpoint}.pt"
    if not weights.exists():
        raise ConfigError(f"--run {run_dir}: no {weights.name} in the run folder (is it a udareid run?)")
    model, config = model_from_weights(str(weights))
    torch_device = resolve_device(device or config.device)
    spec = config.target or config.dataset
    dataset = load_dataset(spec, data_root, **options_for(spec, config.dataset_options))
    histograms = dataset_histograms(model.to(torch_device), dataset, config.data, device=torch_device, progress=not quiet)
    json_path, png_path = save_histograms(histograms, run_dir, title=f"{run_dir.name} ({checkpoint}.pt), {dataset.name}")
    for split, histogram in histograms.items():
        summary = histogram.summary()
        click.echo(f"{split:>6}: positive {summary['pos_mean']:.3f} ± {summary['pos_std']:.3f} ({summary['pos_pairs']} pairs)"
                   f"  negative {summary['neg_mean']:.3f} ± {summary['neg_std']:.3f} ({summary['neg_pairs']} pairs)")
    click.echo(f"wrote {png_path} and {json_path}")


@cli.command("inspect-agreement")
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False, exists=True, path_type=Path), help="A PPLR run folder.")
@click.option("--epoch", type=int, default=None, help="Epoch whose scores to show (default: the last one saved).")
@click.option("--count", type=int, default=12, show_default=True, help="Images in each row.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="PNG to write (default: RUN/agreement_extremes_epochNNN.png).")
@_data_root_option
def inspect_agreement(run_dir, epoch, count, out, data_root):
    """Grid of the target images with the lowest and the highest PPLR cross-agreement."""
    from .data.datasets import load_dataset, options_for
    from .data.image_dataset import readable_samples
    from .engine.epoch_records import load_epoch_records
    from .evaluation.agreement_grid import save_agreement_grid

    config_path = run_dir / "config.yaml"
    if not config_path.exists():
        raise ConfigError(f"--run {run_dir}: no config.yaml in the run folder (is it a udareid run?)")
    config = load_recipe(config_path)
    records = {e: r for e, r in load_epoch_records(run_dir).items() if "score_agreement" in r}
    if not records:
        raise ConfigError(f"--run {run_dir}: no epoch with agreement scores in {run_dir / 'epochs'} (is it a PPLR run?)")
    epoch = epoch if epoch is not None else max(records)
    if epoch not in records:
        raise ConfigError(f"--epoch {epoch}: no agreement scores saved for it; saved epochs: {', '.join(map(str, sorted(records)))}")
    spec = config.target or config.dataset
    dataset = load_dataset(spec, data_root, **options_for(spec, config.dataset_options))
    samples = readable_samples(dataset.train, progress=False) if config.data.skip_unreadable else dataset.train
    out = out or run_dir / f"agreement_extremes_epoch{epoch:03d}.png"
    scores = records[epoch]["score_agreement"]
    save_agreement_grid(samples, scores, out, count=count, title=f"{run_dir.name}, epoch {epoch}: cross-agreement (mean; per part)")
    click.echo(f"epoch {epoch}: agreement mean {scores.mean():.3f}, lowest {scores.mean(axis=1).min():.3f}, "
               f"highest {scores.mean(axis=1).max():.3f}")
    click.echo(f"wrote {out}")


# --------------------------------------------------------------------------- synth
@cli.command()
@click.option("--domain", type=click.Choice(["synthx", "synthm", "all"]), default="all", show_default=True, help="Which synthetic domain to generate.")
@_data_root_option
@click.option("--num-train-ids", type=int, default=None, help="Identities in the train split (default: the domain's).")
@click.option("--num-test-ids", type=int, default=None, help="Identities in query/gallery (default: the domain's).")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Generator seed (default: the domain's).")
@click.option("--overwrite", is_flag=True, help="Regenerate even if a folder with these parameters exists.")
@click.option("--montage", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Also save a grid of sample images (PNG; one per domain, suffixed).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def synth(domain, data_root, num_train_ids, num_test_ids, seed, overwrite, montage, quiet):
    """Generate the built-in synthetic domains (Market-1501 layout) under the data root.

    Later runs use whatever size was generated here (e.g. --num-train-ids 50 for a quicker demo).
    """
    from .data.datasets import resolve_data_root
    from .data.synthetic import ensure_domain, generate_domain, save_montage

    root = resolve_data_root(data_root)
    sizes = {"num_train_ids": num_train_ids, "num_test_ids": num_test_ids, "seed": seed}
    for name in (["synthx", "synthm"] if domain == "all" else [domain]):
        if overwrite:
            folder = generate_domain(root, name, overwrite=True, progress=not quiet, **sizes)
        else:
            folder = ensure_domain(root, name, progress=not quiet, **sizes)
        click.echo(f"{name}: {folder}")
        if montage is not None:
            target = montage.with_name(f"{montage.stem}_{name}{montage.suffix or '.png'}")
            save_montage(folder, target, n=10, images_per_row=12)
            click.echo(f"{name}: montage {target}")


# --------------------------------------------------------------------------- data
@cli.group()
def data() -> None:
    """Inspect datasets."""


@data.command("stats")
@click.option("--dataset", required=True, help="Dataset name (market1501, dukemtmc, msmt17, personx, cuhk03, folder, synthx, synthm; short names work).")
@click.option("--data-root", "--root", "data_root", type=click.Path(file_okay=False, path_type=Path), default=None, help="Data root (default: $UDAREID_DATA, else ~/.cache/udareid/data).")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE", help="Dataset option, e.g. variant=detected (cuhk03), path=DIR / camera_regex=REGEX (folder).")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
def data_stats(dataset, data_root, options, as_json):
    """Images / ids / cameras per split (train, query, gallery)."""
    from .data.datasets import format_stats, load_dataset

    loaded = load_dataset(dataset, data_root, **parse_set_options(options, "--option"))
    if as_json:
        click.echo(json.dumps({"dataset": loaded.name, "root": str(loaded.root), "layout": loaded.layout, **loaded.stats()}))
    else:
        click.echo(format_stats(loaded))


# --------------------------------------------------------------------------- bench
class _BenchmarkGroup(click.Group):
    """``udareid bench NAME``: the scripts of ``benchmarks/``, loaded only when one is called."""

    scripts = {"clustering": ("clustering_stage.py", "clustering_bench"),
               "throughput": ("training_throughput.py", "main"),
               "evaluation": ("evaluation_memory.py", "main"),
               "synthetic": ("synthetic_uda.py", "main"),
               "pretraining": ("pretraining.py", "main")}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self.scripts)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.scripts:
            return None
        import importlib.util

        file_name, command = self.scripts[name]
        path = Path(__file__).resolve().parent.parent / "benchmarks" / file_name
        if not path.is_file():
            raise ConfigError(f"udareid bench {name} runs {path}, which is part of the source checkout "
                              f"(benchmarks/ is not installed with the package); run it from a clone")
        spec = importlib.util.spec_from_file_location(f"uda_reid_benchmark_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return getattr(module, command)


@cli.group(cls=_BenchmarkGroup)
def bench() -> None:
    """Benchmarks that print JSON figures (the scripts in benchmarks/ of a source checkout)."""


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="udareid")


if __name__ == "__main__":
    sys.exit(main())
