"""Options several commands share, and how a command turns recipe + flags into a ``RunConfig``."""

from __future__ import annotations

import dataclasses
import operator
import os
from pathlib import Path
from typing import Any, Callable, TypeVar

import click

from ..config import (
    PRECISIONS,
    RunConfig,
    apply_overrides,
    find_recipe,
    load_recipe,
    parse_set_options,
)
from ..errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])


class Opt:
    """A click option declared once and used twice: as a decorator on a command written out, and as
    an option object in the lists of options the training commands build on demand."""

    def __init__(self, *decls: str, **attrs: Any) -> None:
        self.decls, self.attrs = decls, attrs

    def __call__(self, f: F) -> F:
        return click.option(*self.decls, **self.attrs)(f)

    def build(self) -> click.Option:
        return click.Option(list(self.decls), **self.attrs)


DATA_ROOT = Opt("--data-root", type=click.Path(file_okay=False, path_type=Path), default=None,
                help="Folder holding the datasets (default: $UDAREID_DATA, else ~/.cache/udareid/data).")
DEVICE = Opt("--device", default=None, help="auto (cuda when available, else cpu), cpu, cuda or cuda:N.")
PRECISION = Opt(
    "--precision", type=click.Choice(list(PRECISIONS)), default=None,
    help="Backbone arithmetic: fp32, bf16 (CPUs with AVX-512 BF16/AMX, recent GPUs), fp16 (GPUs, with loss "
         "scaling) or auto (fp16 on GPUs, bf16 where the CPU has it, else fp32). Losses, memories and "
         "checkpoints stay float32. Default: the recipe's (fp32).",
)
DATASET_OPTION = Opt(
    "--dataset-option", "dataset_options", multiple=True, metavar="[NAME.]KEY=VALUE",
    help="A dataset's own option, saved in the run's config (so --resume and evaluate find the same data): "
         "camera_regex=REGEX or none (folder), variant=detected (cuhk03). Without NAME. it is the target's "
         "(train / evaluate: the --dataset's).",
)
QUIET = Opt("--quiet", is_flag=True, help="No progress bars.")
INIT = Opt("--init", default=None, help="Initial weights: imagenet (torchvision's, downloaded once into the torch "
                                        "cache), imagenet:PATH, lup:PATH, upreid:PATH, moco:PATH (udareid pretrain's "
                                        "backbone.pth) or a uda_reid checkpoint.")
EVAL_ON = Opt("--eval-on", "eval_on", multiple=True, help="Also evaluate the final model on this dataset (repeatable).")

#: Device, precision, dataset options, seed, resume, --set and --quiet: every training command's last options.
RUN_CONTROL = (
    DEVICE,
    PRECISION,
    DATASET_OPTION,
    Opt("--seed", type=click.IntRange(min=0), default=None, help="Random seed (default: the recipe's)."),
    Opt("--resume", is_flag=True, help="Continue the run in --out from its last.pt."),
    Opt("--set", "set_options", multiple=True, metavar="KEY=VALUE",
        help="Override any recipe key, e.g. --set optim.lr=1e-4 --set clustering.eps=0.5."),
    QUIET,
    Opt("--overwrite", is_flag=True,
        help="Let a new run write into an --out folder that holds other files (those with the names a run "
             "writes are replaced); without it such a folder is refused."),
    Opt("--no-tensorboard", "no_tensorboard", is_flag=True,
        help="Do not write TensorBoard event files (tensorboard: false); metrics.jsonl, metrics.png and log.txt "
             "are written anyway."),
)


def with_dataset_options(config: RunConfig, default_spec: str, pairs: tuple[str, ...], specs: list[str]) -> RunConfig:
    """``config`` with ``--dataset-option`` pairs merged into ``dataset_options``, each checked against
    the dataset it names (before any work, so a typo costs nothing)."""
    from ..data.datasets import canonical_name, checked_options, split_spec

    merged = {name: dict(values) for name, values in config.dataset_options.items()}
    for key, value in parse_set_options(pairs, "--dataset-option").items():
        prefix, _, option = key.rpartition(".")
        name = split_spec(canonical_name(prefix))[0] if prefix else split_spec(default_spec)[0]
        merged.setdefault(name, {})[option] = value
    for spec in specs:  # every dataset the run reads, with the options it will get
        checked_options(spec, merged.get(split_spec(spec)[0], {}))
    return dataclasses.replace(config, dataset_options=merged)


def load_dataset_for(spec: str, data_root, config: RunConfig):
    """``spec`` with the options ``config`` holds for it; the loader's notes (a folder read as one
    camera) go to stderr, where the user sees them next to the command's output."""
    from ..data.datasets import load_dataset, options_for

    dataset = load_dataset(spec, data_root, **options_for(spec, config.dataset_options))
    for note in dataset.notes:
        click.echo(f"note: {note}", err=True)
    return dataset


def resolve_config(recipe: str, overrides: dict[str, Any], set_options: tuple[str, ...]) -> RunConfig:
    """Recipe file, then the explicit flags, then ``--set key=value`` pairs."""
    config = load_recipe(find_recipe(recipe))
    given = {k: v for k, v in overrides.items() if v is not None}
    pairs = parse_set_options(set_options)
    for key in sorted(set(given) & set(pairs)):  # compared as the config types them ('3' from --set is 3)
        as_flag, as_set = (operator.attrgetter(key)(apply_overrides(config, {key: value}, source))
                           for value, source in ((given[key], "option"), (pairs[key], "--set")))
        if as_flag != as_set:
            raise ConfigError(f"{key} is given twice: {as_flag!r} by a command-line option and {as_set!r} by "
                              f"--set {key}=...; give it once")
    config = apply_overrides(config, given, "option")
    return apply_overrides(config, pairs, "--set")


def shared_overrides(init, arch, device, precision, seed, eval_on, no_tensorboard=False) -> dict[str, Any]:
    """The flags every training command shares, as dotted config keys (None = keep the recipe's)."""
    return {
        "tensorboard": False if no_tensorboard else None,
        "model.init": init,
        "model.arch": arch,
        "device": device,
        "precision": precision,
        "seed": seed,
        "eval_datasets": list(eval_on) if eval_on else None,
    }


def run_on_every_process(run, config: RunConfig, out: Path, *, data_root, resume: bool, quiet: bool,
                         overwrite: bool = False):
    """``run(config, out, ...)`` on every torchrun process (or the one process); its summary on rank 0,
    None on the others (which print nothing).

    The run folder's rules (uda_reid.run_folder) hold on rank 0: a folder with the user's files is
    refused without ``--overwrite``, one process at a time holds it, and a run stopped before its
    first checkpoint leaves nothing behind. A stop by SIGINT / SIGTERM says where the run stands.
    """
    from ..distributed import distributed_session
    from ..engine.memory_check import MEMORY_LIMIT_ENV, parse_size
    from ..run_folder import (
        check_run_folder,
        remove_if_empty,
        removed_if_stopped_before_a_checkpoint,
        run_lock,
    )
    from ..stopping import Stopped

    if os.environ.get(MEMORY_LIMIT_ENV):  # a typo in the budget is named before any work (data generation too)
        parse_size(os.environ[MEMORY_LIMIT_ENV])
    with distributed_session(config.device) as dist:
        # rank 0 looks, before any rank writes: another rank could otherwise see rank 0's config.yaml
        dist.on_main(check_run_folder, out, resume=resume, overwrite=overwrite)
        if not dist.is_main:
            run(config, out, data_root=data_root, resume=resume, progress=not quiet, dist=dist)
            return None
        existed = out.is_dir()
        try:
            with run_lock(out) as note, removed_if_stopped_before_a_checkpoint(out):
                if note is not None:
                    click.echo(f"note: {note}", err=True)
                return run(config, out, data_root=data_root, resume=resume, progress=not quiet, dist=dist)
        except BaseException as error:
            if not existed:
                remove_if_empty(out)  # a folder this run made and left nothing in
            if isinstance(error, Stopped):
                error.message = stopped_message(error, out)
            raise


def stopped_message(stop, out: Path) -> str:
    """Where a stopped run stands and the command that continues it."""
    from ..run_folder import has_checkpoint

    where = stop.where  # set by the TrainingLoop that was running, if one was
    context = click.get_current_context(silent=True)
    command = context.command_path if context is not None else "udareid"
    if has_checkpoint(out):
        return (f"stopped by {stop.name}{where}; {out} keeps its last complete epoch. Continue with the same "
                f"command and --resume: {command} … --resume --out {out}")
    return (f"stopped by {stop.name}{where}, before the run's first checkpoint: nothing to resume, and what it "
            f"had written in {out} was removed; run the same command again to start over")
