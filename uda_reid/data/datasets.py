"""The dataset registry: every dataset a run can name, each returning train/query/gallery samples.

A dataset is registered where its loader is defined (`@DATASETS.register("market1501")`). A loader
takes the data root and its own keyword options and returns a :class:`ReidDataset`; the parsing of
real layouts lives in :mod:`uda_reid.data.layouts`. :func:`load_dataset` is the one entry point.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Callable

from ..config import Rule, options_of_function, update_dataclass
from ..errors import ConfigError, DatasetLayoutError
from ..registry import Registry
from .layouts import (
    MSMT_CAMERAS,
    NamingRule,
    Sample,
    compile_camera_regex,
    find_dataset_folder,
    has_msmt_lists,
    holds_market_style,
    layout_sketch,
    market_style_tree,
    msmt_tree,
    read_image_folder,
    read_market_style,
    read_msmt_lists,
)

__all__ = [
    "DATASETS",
    "ReidDataset",
    "Sample",
    "format_stats",
    "load_dataset",
    "resolve_data_root",
]

DATA_ROOT_ENV = "UDAREID_DATA"
DEFAULT_DATA_ROOT = Path("~/.cache/udareid/data")
SPLITS = ("train", "query", "gallery")


@dataclass
class ReidDataset:
    """The three splits of one dataset, plus where and in which layout it was found."""

    name: str
    root: Path
    train: list[Sample]
    query: list[Sample]
    gallery: list[Sample]
    layout: str
    #: What the loader decided for the user and they should hear (on screen and in the run's log).
    notes: tuple[str, ...] = ()

    def stats(self) -> dict[str, dict[str, int]]:
        """Images, identities (unlabeled -1 not counted) and cameras per split."""
        return {
            split: {
                "images": len(samples),
                "ids": len({s.pid for s in samples if s.pid >= 0}),
                "cameras": len({s.camid for s in samples}),
            }
            for split, samples in zip(SPLITS, (self.train, self.query, self.gallery))
        }

    @property
    def num_train_ids(self) -> int:
        return len({s.pid for s in self.train if s.pid >= 0})

    @property
    def num_cameras(self) -> int:
        """Size of the camera index over all splits (max camid + 1), so camids can index arrays."""
        camids = [s.camid for split in (self.train, self.query, self.gallery) for s in split]
        return max(camids) + 1 if camids else 0


DatasetLoader = Callable[..., ReidDataset]
DATASETS: Registry[DatasetLoader] = Registry("dataset", "--dataset")


def resolve_data_root(root: str | os.PathLike | None = None) -> Path:
    """The folder holding all datasets: the argument, else $UDAREID_DATA, else ~/.cache/udareid/data."""
    if root is None or str(root) == "":
        root = os.environ.get(DATA_ROOT_ENV) or DEFAULT_DATA_ROOT
    return Path(root).expanduser().absolute()


# Short names people type (`udareid adapt --source personx --target market`).
ALIASES = {"market": "market1501", "duke": "dukemtmc", "msmt": "msmt17", "cuhk03np": "cuhk03"}


def split_spec(spec: str) -> tuple[str, str | None]:
    """``NAME`` or ``NAME:PATH`` (``folder:/data/my_cameras``) -> (registered name, path or None)."""
    name, sep, path = spec.partition(":")
    return ALIASES.get(name.lower(), name), (path if sep else None)


def canonical_name(name: str) -> str:
    """The registered name for `name` or one of its aliases, a ``:PATH`` kept (unknown names pass through)."""
    base, path = split_spec(name)
    return base if path is None else f"{base}:{path}"


def spec_label(spec: str) -> str:
    """A file-name-safe label of a dataset spec: ``folder:/data/cams`` -> ``folder_cams``."""
    base, path = split_spec(spec)
    return base if path is None else f"{base}_{Path(path).expanduser().name or 'root'}"


def load_dataset(name: str, root: str | os.PathLike | None = None, **options) -> ReidDataset:
    """Load dataset `name` (``NAME`` or ``NAME:PATH``) from the data root; `options` are the
    dataset's own (e.g. variant=..., camera_regex=...); ``:PATH`` is its ``path`` option."""
    name, options = checked_options(name, options)
    return DATASETS.get(name)(resolve_data_root(root), **options)


def dataset_options_type(name: str) -> type:
    """The options dataset ``name`` takes, as a dataclass: its loader's keyword-only parameters, each
    declaring its type and rule in its annotation (``Annotated[str, Rule(choices=...)]``), so the
    config checks ``dataset_options`` with the same declarations as every other setting."""
    return options_of_function(DATASETS.get(name))


def checked_options(spec: str, options: dict) -> tuple[str, dict]:
    """(registered name, options with ``:PATH`` as ``path``, typed by their declarations), or a
    ConfigError naming what the dataset takes or what an option must be."""
    name, path = split_spec(spec)
    declared = dataset_options_type(name)
    accepted = [f.name for f in dataclasses.fields(declared)]
    if path is not None:
        if "path" not in accepted:
            raise ConfigError(f"dataset {name!r} takes no path ({name}:{path}); it is found under the data root "
                              f"(--data-root). Only 'folder' takes one: folder:{path}")
        options = {**options, "path": path}
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        takes = ", ".join(accepted) if accepted else "no options"
        raise ConfigError(f"dataset {name!r} got unknown option(s) {', '.join(unknown)}; it takes: {takes}")
    parsed = update_dataclass(declared(), options, f"dataset_options.{name}")
    return name, {key: getattr(parsed, key) for key in options}


def options_for(spec: str, dataset_options: dict[str, dict]) -> dict:
    """The options a run's config holds for ``spec`` (``dataset_options`` is keyed by registered name)."""
    return dict(dataset_options.get(split_spec(spec)[0], {}))


def format_stats(dataset: ReidDataset) -> str:
    """An aligned table of images / ids / cameras per split, then the layout that was read."""
    header = ("split", "images", "ids", "cameras")
    rows = [header] + [
        (split, str(counts["images"]), str(counts["ids"]), str(counts["cameras"]))
        for split, counts in dataset.stats().items()
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = [f"dataset {dataset.name}  ({dataset.root})"]
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])]
        lines.append("  " + "  ".join(cells))
    lines.append(f"layout: {dataset.layout}")
    lines.extend(f"note: {note}" for note in dataset.notes)
    train = dataset.stats()["train"]
    if train["ids"] == 0 and train["cameras"] > 1 and train["cameras"] * 2 > train["images"]:  # unlabeled images
        lines.append(f"warning: {train['cameras']} cameras for {train['images']} train images: the camera pattern "
                     f"seems to read a number that changes with every image; check camera_regex "
                     f"(--option camera_regex=REGEX, or none for one camera)")
    return "\n".join(lines)


# ---- Market-style datasets -------------------------------------------------------------------

MARKET_RULE = NamingRule(
    pattern=r"([-\d]+)_c(\d)", cameras=(1, 2, 3, 4, 5, 6), example="0002_c1s1_000451_03.jpg", distractor_pid=0
)
DUKE_RULE = NamingRule(pattern=r"([-\d]+)_c(\d)", cameras=tuple(range(1, 9)), example="0005_c2_f0046985.jpg")
PERSONX_RULE = NamingRule(
    pattern=r"([-\d]+)_c([-\d]+)", cameras=(3, 4, 8, 10, 11, 12), example="0001_c3_000001.jpg"
)
CUHK03_RULE = NamingRule(pattern=r"([-\d]+)_c(\d+)", cameras=(1, 2), example="0001_c1_1.png")
MSMT_MARKET_STYLE_RULE = NamingRule(
    pattern=r"([-\d]+)_c(\d+)", cameras=MSMT_CAMERAS, example="0000_c1_0000.jpg"
)


def _load_market_style(
    name: str, data_root: Path, folder_names: list[str], rule: NamingRule, parents: tuple[str, ...]
) -> ReidDataset:
    sketch = layout_sketch(folder_names, market_style_tree(rule.example), parents=parents)
    folder = find_dataset_folder(data_root, folder_names, sketch, parents=parents, holds=holds_market_style)
    train, query, gallery = read_market_style(folder, rule, sketch)
    layout = f"{folder.relative_to(data_root).as_posix()}/ (Market-style folders)"
    return ReidDataset(name, folder, train, query, gallery, layout=layout)


@DATASETS.register("market1501")
def market1501(data_root: Path) -> ReidDataset:
    """Market-1501: 751 train ids, 6 cameras; junk (-1) dropped, distractors (0000) kept in gallery."""
    folder_names = ["Market-1501-v15.09.15", "market1501", "Market-1501"]
    return _load_market_style("market1501", data_root, folder_names, MARKET_RULE, ("market1501", "market"))


@DATASETS.register("dukemtmc")
def dukemtmc(data_root: Path) -> ReidDataset:
    """DukeMTMC-reID: 702 train ids, 8 cameras."""
    parents = ("dukemtmc", "dukemtmcreid", "dukemtmc-reid", "duke")  # SpCL, cluster-contrast, torchreid
    return _load_market_style("dukemtmc", data_root, ["DukeMTMC-reID"], DUKE_RULE, parents)


@DATASETS.register("personx")
def personx(data_root: Path) -> ReidDataset:
    """PersonX (synthetic, 1,266 ids): cameras 3, 4, 8, 10, 11, 12 become 0..5."""
    return _load_market_style("personx", data_root, ["PersonX", "personx"], PERSONX_RULE, ("personx",))


@DATASETS.register("cuhk03")
def cuhk03(
    data_root: Path,
    *,
    variant: Annotated[str, Rule(choices=("labeled", "detected"), help="hand-labeled or detected boxes")] = "labeled",
) -> ReidDataset:
    """CUHK03-NP (767 train / 700 test ids, 2 cameras) with hand-labeled or detected boxes."""
    folder_names = [f"cuhk03_np/{variant}", f"cuhk03-np/{variant}"]
    return _load_market_style("cuhk03", data_root, folder_names, CUHK03_RULE, ("cuhk03",))


@DATASETS.register("msmt17")
def msmt17(data_root: Path) -> ReidDataset:
    """MSMT17 from its list files (train = list_train + list_val) or a Market-style copy; 15 cameras."""
    folder_names = ["MSMT17_V1", "MSMT17_V2"]
    parents = ("msmt17", "msmt")
    list_sketch = layout_sketch(folder_names, msmt_tree(), parents=parents)
    market_tree = market_style_tree(MSMT_MARKET_STYLE_RULE.example)
    market_sketch = layout_sketch(folder_names, market_tree, parents=parents)
    copy_sketch = layout_sketch(folder_names, market_tree, heading="or a Market-style reorganised copy:")
    both = f"{list_sketch}\n{copy_sketch}"
    folder = find_dataset_folder(data_root, folder_names, both, parents=parents,
                                 holds=lambda f: has_msmt_lists(f) or holds_market_style(f))
    if has_msmt_lists(folder):
        train, query, gallery = read_msmt_lists(folder, list_sketch)
        layout = f"{folder.relative_to(data_root).as_posix()}/ list files (train = list_train + list_val)"
    elif (folder / "bounding_box_train").is_dir():
        train, query, gallery = read_market_style(folder, MSMT_MARKET_STYLE_RULE, market_sketch)
        layout = f"{folder.relative_to(data_root).as_posix()}/ Market-style reorganised copy"
    else:
        raise DatasetLayoutError(f"{folder} has neither MSMT17 list files nor bounding_box_train/\n{both}")
    return ReidDataset("msmt17", folder, train, query, gallery, layout=layout)


# ---- a user's own cameras --------------------------------------------------------------------

# ``c<digits>`` at the start of the name or after ``_``, ended by ``_`` or Market's ``s<digit>``: a
# hexadecimal name like ``c81234.jpg`` or ``c8a1f.jpg`` is not read as a camera.
FOLDER_CAMERA_REGEX = r"(?:^|_)c(\d+)(?=_|s\d)"
#: The folder's default camera_regex: FOLDER_CAMERA_REGEX, or one camera when no file name has the field.
AUTO_CAMERAS = "auto"


def _is_camera_regex(value: str) -> bool:
    if value.lower() == AUTO_CAMERAS:
        return True
    try:
        compile_camera_regex(value)
    except ConfigError:
        return False
    return True


@DATASETS.register("folder")
def image_folder(
    data_root: Path,
    *,
    path: Annotated[str | os.PathLike | None, Rule(help="the image folder (default: the data root itself)")] = None,
    camera_regex: Annotated[str | None, Rule(
        check=_is_camera_regex, help="the camera id from the file name",
        expects="auto, a regex with exactly one group giving the camera id (e.g. 'c(\\d+)'), or none for one camera",
    )] = AUTO_CAMERAS,
) -> ReidDataset:
    """Unlabeled images of one's own cameras for USL: all go to train with pid -1; no query/gallery.

    `path` is the image folder (default: the data root itself). `camera_regex` has one group giving
    the camera id from the file name, or is `none` for a single camera. The default, `auto`, reads
    the Market-style field `c<digits>` at the start of the name or after `_`, ended by `_` or `s<digit>`
    (`cam_c3_0001.jpg`, `c2_000451.jpg`, `0002_c1s1_000451_03.jpg`; `pic0001.jpg` and `c81234.jpg` are not
    camera ids) and, when no name has it (most people's crops),
    reads the folder as one camera with a note saying so. Some names with the field and some without
    is an error: that is a naming slip, not a single camera.
    """
    folder = Path(path).expanduser().absolute() if path is not None else data_root
    auto = camera_regex is not None and camera_regex.lower() == AUTO_CAMERAS
    train, as_one_camera = read_image_folder(folder, FOLDER_CAMERA_REGEX if auto else camera_regex,
                                             one_camera_if_none_match=auto)
    single_camera = as_one_camera or camera_regex is None or camera_regex.lower() == "none"
    notes: tuple[str, ...] = ()
    if as_one_camera:
        notes = (f"{folder}: no file name carries a camera id (like cam_c3_0001.jpg), so all {len(train)} images "
                 f"are read as one camera; to give camera ids, name the files that way or pass "
                 f"--dataset-option camera_regex=REGEX (one group: the camera)",)
    if single_camera:
        cameras = "every image in camera 0"
    else:
        cameras = f"cameras from camera_regex '{FOLDER_CAMERA_REGEX if auto else camera_regex}'"
    return ReidDataset("folder", folder, train, [], [], layout=f"unlabeled image folder, {cameras}", notes=notes)


# ---- built-in synthetic domains --------------------------------------------------------------

# Market names and rules; a domain has c1..c6 by default and at most c1..c9 (one-digit camera field).
SYNTHETIC_RULE = NamingRule(
    pattern=r"([-\d]+)_c(\d)", cameras=tuple(range(1, 10)), example="0002_c1s1_000451_03.jpg", distractor_pid=0
)


def _load_synthetic(domain: str, data_root: Path) -> ReidDataset:
    # Imported here so that a broken or missing generator only affects the synthetic names.
    from .synthetic import ensure_domain, resolve_spec

    # Nested (<root>/synthx/SynthX/) when a copy is there, as the real datasets; else generated flat.
    nested_root = data_root / domain
    root = nested_root if (nested_root / resolve_spec(domain).folder).is_dir() else data_root
    domain_folder = Path(ensure_domain(root, domain))
    sketch = layout_sketch(
        [domain_folder.name], market_style_tree(SYNTHETIC_RULE.example), root_label=f"{domain_folder.parent}"
    )
    train, query, gallery = read_market_style(domain_folder, SYNTHETIC_RULE, sketch)
    layout = f"synthetic domain {domain} in {domain_folder.name}/ (Market-style folders)"
    return ReidDataset(domain, domain_folder, train, query, gallery, layout=layout)


@DATASETS.register("synthx")
def synthx(data_root: Path) -> ReidDataset:
    """Built-in synthetic domain X (generated under the data root on first use)."""
    return _load_synthetic("synthx", data_root)


@DATASETS.register("synthm")
def synthm(data_root: Path) -> ReidDataset:
    """Built-in synthetic domain M (generated under the data root on first use)."""
    return _load_synthetic("synthm", data_root)
