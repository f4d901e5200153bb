"""The commands that use a trained model: ``evaluate``, ``extract``, ``search`` and ``export``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..config import apply_overrides, find_recipe, load_recipe, parse_set_options
from ..errors import ConfigError
from .group import cli
from .options import DATA_ROOT, DATASET_OPTION, DEVICE, PRECISION, load_dataset_for, with_dataset_options


def _trained_model_options(f):
    """--weights, --arch, --device, --precision and --set: the options of every command that uses a model."""
    f = click.option("--set", "set_options", multiple=True, metavar="KEY=VALUE",
                     help="Override a setting of the checkpoint's config, e.g. --set data.eval_batch_size=64.")(f)
    f = PRECISION(DEVICE(f))
    f = click.option("--arch", default="resnet50", show_default=True,
                     help="Backbone, for weights that are not a uda_reid checkpoint.")(f)
    return click.option("--weights", required=True, help="A uda_reid checkpoint (best.pt / last.pt), or imagenet / "
                        "imagenet:PATH / lup:PATH / upreid:PATH / moco:PATH with --arch.")(f)


def _trained_model(weights: str, arch: str, set_options: tuple[str, ...], device: str | None, precision: str | None,
                   recipe: str | None = None):
    """(model on its device in the run's precision, the config it was trained with + --recipe / --set, the device)."""
    from ..device import resolve_device
    from ..models.factory import model_from_weights
    from ..models.arithmetic_check import checked_precision
    from ..precision import resolve_precision

    def adjust(config):
        if recipe is not None:
            config = load_recipe(find_recipe(recipe), base=config)
        return apply_overrides(config, parse_set_options(set_options), "--set")

    model, config = model_from_weights(weights, arch, adjust=adjust,  # the run's config: its precision, unless --precision
                                       say=lambda line: click.echo(line, err=True))
    torch_device = resolve_device(device or "auto")
    requested = precision or config.precision
    resolved, note = checked_precision(resolve_precision(requested, torch_device), requested, model.backbone,
                                       config.data.height, config.data.width, batch=config.data.eval_batch_size,
                                       backward=False)  # decided once (fp32 if this CPU gets it wrong), given to the model
    if note is not None:
        click.echo(f"note: {note}", err=True)
    model, _ = model_from_weights(weights, arch, compute_dtype=resolved.dtype, adjust=adjust)
    return model.to(torch_device), config, torch_device


# --------------------------------------------------------------------------- evaluate
@cli.command()
@click.option("--dataset", required=True, help="Dataset whose query/gallery split is evaluated.")
@_trained_model_options
@click.option("--recipe", default=None, help="Recipe for image size and normalisation (default: the checkpoint's own config).")
@DATA_ROOT
@DATASET_OPTION
@click.option("--rerank", is_flag=True, help="k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def evaluate(dataset, weights, arch, recipe, data_root, device, precision, dataset_options, rerank, as_json, set_options,
             quiet):
    """mAP and Rank-1/5/10 of a model on a dataset's query/gallery (Market protocol)."""
    from ..engine.memory_check import check_extraction
    from ..evaluation.protocol import evaluate_model

    model, config, torch_device = _trained_model(weights, arch, set_options, device, precision, recipe)
    config = with_dataset_options(config, dataset, dataset_options, [dataset])
    data = load_dataset_for(dataset, data_root, config)
    check_extraction(model, config.data, len(data.query) + len(data.gallery), torch_device)
    reranker = None
    if rerank:
        from ..evaluation.rerank import re_rank_chunks

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
@DATA_ROOT
@DATASET_OPTION
@click.option("--quiet", is_flag=True, help="No progress bar.")
def extract(weights, images, dataset, split, out, arch, data_root, device, precision, dataset_options, set_options, quiet):
    """L2-normalised features of images, with their paths (and ids and cameras when known)."""
    from ..engine.memory_check import check_extraction
    from ..models.features import write_features

    if (images is None) == (dataset is None):
        raise ConfigError("extract needs exactly one of --images DIR and --dataset NAME")
    model, config, torch_device = _trained_model(weights, arch, set_options, device, precision)
    spec = f"folder:{images}" if images is not None else dataset
    config = with_dataset_options(config, spec, dataset_options, [spec])
    data = load_dataset_for(spec, data_root, config)
    samples = {"train": data.train, "query": data.query, "gallery": data.gallery,
               "all": [*data.train, *data.query, *data.gallery]}[split]
    if not samples:
        raise ConfigError(f"{data.name} ({data.root}) has no images in split {split!r}")
    check_extraction(model, config.data, len(samples), torch_device, held=out.suffix == ".npz")
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
@DATA_ROOT
@DATASET_OPTION
@click.option("--quiet", is_flag=True, help="No progress bars.")
def search(weights, query, gallery, dataset, top, out, arch, data_root, device, precision, dataset_options,
           set_options, quiet):
    """Each query's nearest gallery images, as pictures (query, then its top K) and as JSON."""
    from ..data.layouts import IMAGE_EXTENSIONS, UNLABELED_PID, Sample
    from ..evaluation.search import write_ranked_lists
    from ..models.features import extract_features, read_features

    if dataset is not None and (query is not None or gallery is not None):
        raise ConfigError("search takes either --dataset NAME or --query and --gallery, not both")
    if dataset is None and (query is None or gallery is None):
        raise ConfigError("search needs --query IMG|DIR and --gallery DIR|FEATURES (or --dataset NAME)")
    model, config, torch_device = _trained_model(weights, arch, set_options, device, precision)
    folders = [f"folder:{p}" for p in (query, gallery) if p is not None and p.is_dir()]
    config = with_dataset_options(config, dataset or "folder", dataset_options, [dataset] if dataset else folders)

    def images_of(spec: str) -> list[Sample]:
        return load_dataset_for(spec, data_root, config).train

    if dataset is not None:
        data = load_dataset_for(dataset, data_root, config)
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
    from ..models.export import export_model
    from ..models.factory import model_from_weights

    model, config = model_from_weights(weights, arch)
    config = apply_overrides(config, parse_set_options(set_options), "--set")
    about = {"weights": str(weights), "arch": config.model.arch}
    path, sidecar = export_model(model, config.data, fmt, out, feature_dim=model.feature_dim, about=about)
    click.echo(f"{fmt} model -> {path}: images float32 N×3×{config.data.height}×{config.data.width}, RGB in [0, 1] "
               f"({config.data.normalization} normalisation inside) -> N×{model.feature_dim} L2-normalised features; "
               f"described in {sidecar}")
