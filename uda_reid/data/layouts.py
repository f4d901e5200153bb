"""Turn the folders and list files of re-ID datasets into lists of samples.

Two real layouts cover the public datasets: Market-style folders (`bounding_box_train/`, `query/`,
`bounding_box_test/`, person and camera encoded in the file name) and MSMT17's list files (`path pid`
lines). A third reader takes any folder of unlabeled images (USL on a user's own cameras). Every
reader fails with a :class:`DatasetLayoutError` that names the folder, file or line at fault and what
was expected, because a silently short dataset is much harder to notice than an error.

Only file names are read here; decoding pixels is the job of the image loader.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ..errors import ConfigError, DatasetLayoutError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")

# Market-style split folders, in the order splits are read and reported.
MARKET_SPLIT_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}

JUNK_PID = -1  # Market's "junk" detections: not a person, dropped from every split
UNLABELED_PID = -1  # images without identity (folder dataset, unlabeled target)


@dataclass(frozen=True)
class Sample:
    """One image of a split.

    `pid` is the person id: the train split is relabelled 0..n-1, query/gallery keep the dataset's own
    ids (0 = Market distractor), -1 = unlabeled. `camid` is a 0-based camera index.
    """

    path: str
    pid: int
    camid: int


@dataclass(frozen=True)
class NamingRule:
    """How a Market-style file name encodes person and camera, e.g. `0002_c1s1_000451_03.jpg`.

    `pattern` is searched in the file name; group 1 is the person id, group 2 the camera number.
    `cameras` are the raw camera numbers the dataset has; they map to 0-based indices in sorted
    order. Images of `distractor_pid` are kept in query/gallery as negatives but are not a training
    identity.
    """

    pattern: str
    cameras: tuple[int, ...]
    example: str
    distractor_pid: int | None = None

    @property
    def camera_index(self) -> dict[int, int]:
        return {raw: index for index, raw in enumerate(sorted(self.cameras))}


def layout_sketch(
    folder_names: Sequence[str],
    tree: Iterable[str],
    root_label: str = "<data root>",
    heading: str = "expected layout:",
    parents: Sequence[str] = (),
) -> str:
    """A small tree of the expected layout, shown whenever a folder or file is missing.

    With ``parents`` it also shows the nested form ``<data root>/<parent>/<folder>/`` that SpCL,
    cluster-contrast, PPLR and torchreid use.
    """
    main, *alternatives = folder_names
    also = f"   (or {', '.join(name + '/' for name in alternatives)})" if alternatives else ""
    entries = list(tree)
    lines = [heading, f"  {root_label}/", f"    {main}/{also}"]
    lines += [f"      {entry}" for entry in entries]
    if parents:
        first, *others = parents
        other_parents = f"   (or {', '.join(name + '/' for name in others)})" if others else ""
        lines += ["  or one level deeper, as SpCL, cluster-contrast, PPLR and torchreid keep it:",
                  f"  {root_label}/", f"    {first}/{other_parents}", f"      {main}/"]
        lines += [f"        {entry}" for entry in entries]
    return "\n".join(lines)


def market_style_tree(example: str) -> list[str]:
    """Tree lines of the three Market-style split folders, with an example file name."""
    return [
        f"bounding_box_train/   {example} ...",
        "query/",
        "bounding_box_test/",
    ]


def holds_market_style(folder: Path) -> bool:
    """Whether ``folder`` looks like a Market-style dataset (it has a train split folder)."""
    return (folder / MARKET_SPLIT_FOLDERS["train"]).is_dir()


def find_dataset_folder(
    data_root: Path,
    folder_names: Sequence[str],
    sketch: str,
    *,
    parents: Sequence[str] = (),
    holds: Callable[[Path], bool] | None = None,
) -> Path:
    """The dataset's folder, flat (``data_root/<name>``) or nested (``data_root/<parent>/<name>``).

    The first candidate that ``holds`` the layout wins; flat names come first. When folders of the
    right name exist but none holds the layout, the deepest is returned so that the reader reports
    what is missing in it. When none exists, the error lists every path tried and the expected tree.
    """
    tried = [data_root / name for name in folder_names]
    tried += [data_root / parent / name for parent in parents for name in folder_names]
    existing = [folder for folder in tried if folder.is_dir()]
    for folder in existing:
        if holds is None or holds(folder):
            return folder
    if existing:
        return max(existing, key=lambda folder: len(folder.parts))
    tried_list = "\n".join(f"  {folder}" for folder in tried)
    if not data_root.is_dir():
        problem = f"data root {data_root} does not exist (pass the data root or set $UDAREID_DATA)"
    else:
        problem = f"no dataset folder found under data root {data_root}"
    raise DatasetLayoutError(f"{problem}; tried:\n{tried_list}\n{sketch}")


def _is_visible_image(path: Path) -> bool:
    # Hidden files include macOS "._0002_c1s1_....jpg" resource forks, which would otherwise parse
    # as a second copy of a real image.
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file()


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files of a folder in sorted order; other files (Thumbs.db, .txt) are ignored."""
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    images = [path for path in candidates if _is_visible_image(path)]
    if recursive:  # skip anything inside a hidden folder (.ipynb_checkpoints, .Trash ...)
        images = [p for p in images if not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    return sorted(images)


def _parse_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def parse_market_split(split_folder: Path, rule: NamingRule) -> list[Sample]:
    """Samples of one Market-style split folder with the ids of the file names (junk dropped)."""
    compiled = re.compile(rule.pattern)
    camera_index = rule.camera_index
    samples = []
    for image in list_images(split_folder):
        match = compiled.search(image.name)
        pid = _parse_int(match.group(1)) if match else None
        raw_camera = _parse_int(match.group(2)) if match else None
        if pid is None or raw_camera is None:
            raise DatasetLayoutError(
                f"file name {image} does not match the pattern '{rule.pattern}' "
                f"(group 1 = person id, group 2 = camera; e.g. {rule.example})"
            )
        if pid == JUNK_PID:
            continue
        if raw_camera not in camera_index:
            allowed = ", ".join(str(camera) for camera in sorted(camera_index))
            raise DatasetLayoutError(
                f"file {image} has camera {raw_camera}, but this dataset's cameras are {{{allowed}}}"
            )
        samples.append(Sample(str(image), pid, camera_index[raw_camera]))
    if not samples:
        raise DatasetLayoutError(
            f"split folder {split_folder} has no usable images "
            f"(expected {'/'.join(IMAGE_EXTENSIONS)} files named like {rule.example})"
        )
    return samples


def relabel_train(samples: Sequence[Sample]) -> list[Sample]:
    """Copy of `samples` with person ids replaced by 0..n-1 in sorted order of the raw ids.

    Classifiers and samplers index identities directly, so train ids must be contiguous.
    """
    new_id = {raw: index for index, raw in enumerate(sorted({s.pid for s in samples}))}
    return [Sample(s.path, new_id[s.pid], s.camid) for s in samples]


def read_market_style(
    dataset_folder: Path, rule: NamingRule, sketch: str
) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """(train, query, gallery) of a Market-style folder: train relabelled, distractors kept in test."""
    splits = {}
    for split, folder_name in MARKET_SPLIT_FOLDERS.items():
        split_folder = dataset_folder / folder_name
        if not split_folder.is_dir():
            raise DatasetLayoutError(f"{split} split folder {split_folder} is missing\n{sketch}")
        splits[split] = parse_market_split(split_folder, rule)
    train = [s for s in splits["train"] if s.pid != rule.distractor_pid]
    if not train:
        raise DatasetLayoutError(
            f"split folder {dataset_folder / MARKET_SPLIT_FOLDERS['train']} has only distractor images "
            f"(person id {rule.distractor_pid})"
        )
    return relabel_train(train), splits["query"], splits["gallery"]


# ---- MSMT17 list files -----------------------------------------------------------------------

MSMT_CAMERAS = tuple(range(1, 16))
MSMT_LIST_EXAMPLE = "0000/0000_000_01_0303morning_0015_0.jpg 0"
# Each list file and the image folders (V1 name, V2 name) its paths are relative to.
MSMT_LISTS = {
    "list_train.txt": ("train", "mask_train_v2"),
    "list_val.txt": ("train", "mask_train_v2"),
    "list_query.txt": ("test", "mask_test_v2"),
    "list_gallery.txt": ("test", "mask_test_v2"),
}


def msmt_tree() -> list[str]:
    return [
        "train/   (MSMT17_V2: mask_train_v2/)   0000/0000_000_01_0303morning_0015_0.jpg ...",
        "test/    (MSMT17_V2: mask_test_v2/)",
        f"list_train.txt, list_val.txt, list_query.txt, list_gallery.txt   lines like '{MSMT_LIST_EXAMPLE}'",
    ]


def _msmt_camera(image: Path, where: str) -> int:
    """0-based camera of an MSMT17 file name: the third `_`-field (`0000_000_01_...` -> 0)."""
    fields = image.stem.split("_")
    raw_camera = _parse_int(fields[2]) if len(fields) >= 3 else None
    if raw_camera is None:
        raise DatasetLayoutError(
            f"{where}: file name {image.name} has no camera number in its third '_'-field "
            f"(expected names like 0000_000_01_0303morning_0015_0.jpg, camera 01)"
        )
    if raw_camera not in MSMT_CAMERAS:
        raise DatasetLayoutError(
            f"{where}: file {image} has camera {raw_camera}, but MSMT17's cameras are 1..{MSMT_CAMERAS[-1]}"
        )
    return raw_camera - 1


def read_msmt_list(list_file: Path, image_folder: Path) -> list[Sample]:
    """Samples of one MSMT17 list file; paths are relative to `image_folder`."""
    samples = []
    for line_number, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{list_file} line {line_number}"
        fields = line.split()
        pid = _parse_int(fields[1]) if len(fields) == 2 else None
        if pid is None:
            raise DatasetLayoutError(
                f"{where}: expected '<relative image path> <person id>' (e.g. '{MSMT_LIST_EXAMPLE}'), "
                f"got {line!r}"
            )
        image = image_folder / fields[0]
        if not image.is_file():
            raise DatasetLayoutError(f"{where}: image {image} does not exist")
        samples.append(Sample(str(image), pid, _msmt_camera(image, where)))
    if not samples:
        raise DatasetLayoutError(
            f"list file {list_file} has no entries (expected lines like '{MSMT_LIST_EXAMPLE}')"
        )
    return samples


def has_msmt_lists(dataset_folder: Path) -> bool:
    return any((dataset_folder / name).is_file() for name in MSMT_LISTS)


def read_msmt_lists(dataset_folder: Path, sketch: str) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """(train, query, gallery) from MSMT17 list files; train = list_train + list_val, relabelled."""
    samples = {}
    for list_name, image_folder_names in MSMT_LISTS.items():
        list_file = dataset_folder / list_name
        if not list_file.is_file():
            raise DatasetLayoutError(f"list file {list_file} is missing\n{sketch}")
        image_folder = next(
            (dataset_folder / name for name in image_folder_names if (dataset_folder / name).is_dir()), None
        )
        if image_folder is None:
            tried = " or ".join(str(dataset_folder / name) for name in image_folder_names)
            raise DatasetLayoutError(f"image folder of {list_name} is missing: tried {tried}\n{sketch}")
        samples[list_name] = read_msmt_list(list_file, image_folder)

    def by_path(split: list[Sample]) -> list[Sample]:
        return sorted(split, key=lambda s: s.path)

    train = relabel_train(by_path(samples["list_train.txt"] + samples["list_val.txt"]))
    return train, by_path(samples["list_query.txt"]), by_path(samples["list_gallery.txt"])


# ---- a user's folder of unlabeled images -----------------------------------------------------

def compile_camera_regex(camera_regex: str | None) -> re.Pattern[str] | None:
    """The compiled camera regex, or None for `none` (every image in camera 0)."""
    if camera_regex is None or camera_regex.lower() == "none":
        return None
    try:
        compiled = re.compile(camera_regex)
    except re.error as error:
        raise ConfigError(f"option camera_regex '{camera_regex}' is not a valid regex: {error}") from None
    if compiled.groups != 1:
        raise ConfigError(
            f"option camera_regex '{camera_regex}' must have exactly one group giving the camera id "
            f"(e.g. 'c(\\d+)'), it has {compiled.groups}; use 'none' to put every image in camera 0"
        )
    return compiled


def read_image_folder(folder: Path, camera_regex: str | None, *, one_camera_if_none_match: bool = False
                      ) -> tuple[list[Sample], bool]:
    """Unlabeled samples (pid -1) of all images under `folder`, cameras from the file names, and
    whether they were read as one camera because no name matched (``one_camera_if_none_match``).

    Raw camera values map to 0-based indices in sorted order, numerically when they are all numbers
    (so `c2` comes before `c10`, and `c01` is the same camera as `c1`). Some names matching and some
    not is an error either way: a half-read camera field is a naming slip to fix, not a default.
    """
    if not folder.is_dir():
        raise DatasetLayoutError(
            f"image folder {folder} does not exist (expected a folder of .jpg/.jpeg/.png/.bmp images, "
            f"searched recursively; camera ids in the file names, e.g. cam_c3_000123.jpg, are optional)"
        )
    images = list_images(folder, recursive=True)
    if not images:
        raise DatasetLayoutError(
            f"image folder {folder} has no images "
            f"(looked for {'/'.join(IMAGE_EXTENSIONS)} files, recursively)"
        )
    compiled = compile_camera_regex(camera_regex)
    if compiled is None:
        return [Sample(str(image), UNLABELED_PID, 0) for image in images], False

    matches = [compiled.search(image.name) for image in images]
    matched = [m is not None and m.group(1) is not None for m in matches]
    if one_camera_if_none_match and not any(matched):
        return [Sample(str(image), UNLABELED_PID, 0) for image in images], True
    if not all(matched):
        image = images[matched.index(False)]
        raise DatasetLayoutError(
            f"file name {image} does not match camera_regex '{compiled.pattern}' ({sum(matched)} of {len(images)} "
            f"names do); pass a camera_regex whose group gives the camera, or 'none' for a single camera"
        )
    raw_cameras = [m.group(1) for m in matches]
    if all(raw.isdigit() for raw in raw_cameras):
        keys: list[int | str] = [int(raw) for raw in raw_cameras]
    else:
        keys = list(raw_cameras)
    camera_index = {key: index for index, key in enumerate(sorted(set(keys)))}  # type: ignore[type-var]
    return [Sample(str(image), UNLABELED_PID, camera_index[key]) for image, key in zip(images, keys)], False
