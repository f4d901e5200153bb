"""Tools around runs and data: ``synth``, ``data stats``, ``plot-distances`` and ``inspect-agreement``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..config import load_recipe, parse_set_options
from ..errors import ConfigError
from .group import cli
from .options import DATA_ROOT, DEVICE, load_dataset_for


@cli.command("plot-distances")
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False, exists=True, path_type=Path), help="A run folder of udareid adapt / usl / train.")
@click.option("--checkpoint", type=click.Choice(["last", "best"]), default="last", show_default=True, help="Which checkpoint of the run to read.")
@DATA_ROOT
@DEVICE
@click.option("--quiet", is_flag=True, help="No progress bars.")
def plot_distances(run_dir, checkpoint, data_root, device, quiet):
    """Histograms of positive vs negative pair distances on the run's target train and test splits.

    Writes distances.png and distances.json into the run folder (GDS runs write them at the end).
    """
    from ..device import resolve_device
    from ..evaluation.distances import dataset_histograms, save_histograms
    from ..models.factory import model_from_weights

    weights = run_dir / f"{checkpoint}.pt"
    if not weights.exists():
        raise ConfigError(f"--run {run_dir}: no {weights.name} in the run folder (is it a udareid run?)")
    model, config = model_from_weights(str(weights))
    torch_device = resolve_device(device or config.device)
    spec = config.target or config.dataset
    dataset = load_dataset_for(spec, data_root, config)
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
@DATA_ROOT
def inspect_agreement(run_dir, epoch, count, out, data_root):
    """Grid of the target images with the lowest and the highest PPLR cross-agreement."""
    from ..data.image_dataset import readable_samples
    from ..engine.epoch_records import load_epoch_records
    from ..evaluation.agreement_grid import save_agreement_grid

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
    dataset = load_dataset_for(spec, data_root, config)
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
@DATA_ROOT
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
    from ..data.datasets import resolve_data_root
    from ..data.synthetic import ensure_domain, generate_domain, save_montage

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
    from ..data.datasets import format_stats, load_dataset

    loaded = load_dataset(dataset, data_root, **parse_set_options(options, "--option"))
    if as_json:
        click.echo(json.dumps({"dataset": loaded.name, "root": str(loaded.root), "layout": loaded.layout,
                               "notes": list(loaded.notes), **loaded.stats()}))
    else:
        click.echo(format_stats(loaded))
