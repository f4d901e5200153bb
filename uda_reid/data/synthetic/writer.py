"""Writing a synthetic domain to disk in the real Market-1501 layout, atomically and reproducibly.

``<data_root>/<folder>/bounding_box_train/``, ``query/``, ``bounding_box_test/`` with Market file
names (``0001_c1s1_000001_00.jpg``) and a ``manifest.json`` of the parameters. Everything is
drawn from generators seeded by (domain seed, role, person id), so the same spec always gives
byte-identical files and a change in one identity never shifts the others. The folder is built
under a temporary name and renamed at the end: an interrupted generation leaves nothing that
looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from ...fileio import atomic_path
from .appearance import VIEWPOINTS, Identity, sample_identity, sample_view
from .cameras import CameraLook, build_camera
from .domains import DomainSpec, resolve_spec
from .render import SUPERSAMPLE, render_non_person, render_person

GENERATOR_VERSION = 1
MANIFEST = "manifest.json"
SPLIT_FOLDERS = ("bounding_box_train", "query", "bounding_box_test")

# Seed roles: what each random stream is for (so streams never overlap).
_CAMERA, _IDENTITY, _IMAGES, _FALSE_DETECTIONS = 9, 1, 2, 3


def _cameras(spec: DomainSpec) -> list[CameraLook]:
    render_size = (spec.width * SUPERSAMPLE, spec.height * SUPERSAMPLE)
    return [
        build_camera(np.random.default_rng([spec.seed, _CAMERA, index]), index, spec.style, render_size)
        for index in range(1, spec.num_cameras + 1)
    ]


def _view(rng: np.random.Generator, spec: DomainSpec, viewpoint: str, walk_phase: float, **changes: Any):
    style = spec.style
    return sample_view(
        rng,
        viewpoint=viewpoint,
        walk_phase=walk_phase,
        person_height=changes.get("person_height", style.person_height),
        box_jitter=style.box_jitter,
        rotation_degrees=style.rotation_degrees,
        brightness_jitter=style.brightness_jitter,
        light_gradient=style.light_gradient,
        occluder_probability=style.occluder_probability,
    )


def _save_jpeg(image: Image.Image, path: Path, spec: DomainSpec, rng: np.random.Generator) -> None:
    low, high = spec.style.jpeg_quality
    image.save(path, "JPEG", quality=int(rng.integers(low, high + 1)))


class _FrameCounter:
    """Running frame numbers per camera, as a real recording has."""

    def __init__(self) -> None:
        self.frames: dict[int, int] = {}

    def next(self, camera: int, rng: np.random.Generator) -> int:
        self.frames[camera] = self.frames.get(camera, 0) + int(rng.integers(1, 40))
        return self.frames[camera]


def _person_images(
    spec: DomainSpec, identity: Identity, cameras: list[CameraLook], frames: _FrameCounter
) -> list[tuple[int, int, Image.Image, np.random.Generator]]:
    """All images of one person: ``(camera index, frame, image, rng)``; every camera seen shows ≥ 2."""
    rng = np.random.default_rng([spec.seed, _IMAGES, identity.person_id])
    count = int(rng.integers(spec.images_per_id[0], spec.images_per_id[1] + 1))
    num_seen = int(rng.integers(2, min(spec.num_cameras, count // 2) + 1))
    seen = sorted(rng.choice(spec.num_cameras, size=num_seen, replace=False).tolist())
    # One tracklet per camera: the viewpoint stays mostly the same while the person walks by.
    tracklets = {}
    for index in seen:
        camera = cameras[index]
        tracklets[index] = (
            VIEWPOINTS[int(rng.choice(len(VIEWPOINTS), p=np.asarray(camera.viewpoint_weights)))],
            float(rng.uniform(0, 2 * np.pi)),
        )
    images = []
    for k in range(count):
        index = seen[k % num_seen]
        viewpoint, phase = tracklets[index]
        if rng.random() < 0.15:  # the person turns
            viewpoint = VIEWPOINTS[int(rng.integers(len(VIEWPOINTS)))]
        view = _view(rng, spec, viewpoint, phase + 0.7 * k)
        camera = cameras[index]
        image = render_person(identity, view, camera=camera, style=spec.style, rng=rng, size=(spec.width, spec.height))
        images.append((camera.index, frames.next(camera.index, rng), image, rng))
    return images


def _write_identity(folder: Path, spec: DomainSpec, person_id: int, cameras, frames, test: bool) -> int:
    identity = sample_identity(np.random.default_rng([spec.seed, _IDENTITY, person_id]), person_id)
    images = _person_images(spec, identity, cameras, frames)
    query_cameras: set[int] = set()
    for number, (camera, frame, image, rng) in enumerate(images):
        split = "bounding_box_train"
        if test:
            split = "bounding_box_test"
            if camera not in query_cameras and len(query_cameras) < spec.query_cameras_per_id:
                query_cameras.add(camera)
                split = "query"
        name = f"{person_id:04d}_c{camera}s1_{frame:06d}_{number % 100:02d}.jpg"
        _save_jpeg(image, folder / split / name, spec, rng)
    return len(images)


def _write_false_detections(folder: Path, spec: DomainSpec, cameras, frames) -> int:
    """Gallery distractors (id 0000: background, objects) and junk (id -1: badly cut strangers)."""
    rng = np.random.default_rng([spec.seed, _FALSE_DETECTIONS])
    written = 0
    for kind, prefix, per_id in (("distractor", "0000", spec.distractors_per_test_id), ("junk", "-1", spec.junk_per_test_id)):
        for number in range(int(round(per_id * spec.num_test_ids))):
            camera = cameras[int(rng.integers(spec.num_cameras))]
            stranger = None
            if kind == "junk" or rng.random() < 0.3:
                stranger = sample_identity(rng, 0)
            heights = (0.35, 0.6) if kind == "junk" else spec.style.person_height
            view = _view(rng, spec, VIEWPOINTS[int(rng.integers(4))], float(rng.uniform(0, 6.3)), person_height=heights)
            image = render_non_person(kind, view, camera=camera, style=spec.style, rng=rng,
                                      size=(spec.width, spec.height), stranger=stranger)
            name = f"{prefix}_c{camera.index}s1_{frames.next(camera.index, rng):06d}_{number % 100:02d}.jpg"
            _save_jpeg(image, folder / "bounding_box_test" / name, spec, rng)
            written += 1
    return written


def _manifest(spec: DomainSpec, counts: dict[str, int]) -> dict[str, Any]:
    return {"generator_version": GENERATOR_VERSION, "spec": spec.to_json(), "counts": counts}


def generate_domain(
    data_root: str | os.PathLike,
    domain: str | DomainSpec,
    *,
    num_train_ids: int | None = None,
    num_test_ids: int | None = None,
    seed: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write ``domain`` under ``data_root`` and return its folder.

    An existing folder with the same parameters is kept unless ``overwrite``; one with other
    parameters is replaced (atomically: the old folder stays until the new one is complete).
    """
    spec = resolve_spec(domain, num_train_ids=num_train_ids, num_test_ids=num_test_ids, seed=seed)
    root = Path(data_root).expanduser()
    target = root / spec.folder
    if not overwrite and read_manifest(target) == _manifest_key(spec):
        return target
    root.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{spec.folder}.tmp-", dir=root))
    try:
        for split in SPLIT_FOLDERS:
            (building / split).mkdir()
        cameras = _cameras(spec)
        frames = _FrameCounter()
        counts = {"train_ids": spec.num_train_ids, "test_ids": spec.num_test_ids, "images": 0}
        person_ids = range(1, spec.num_train_ids + spec.num_test_ids + 1)
        for person_id in tqdm(person_ids, desc=f"generating {spec.name}", disable=not progress, leave=False):
            test = person_id > spec.num_train_ids
            counts["images"] += _write_identity(building, spec, person_id, cameras, frames, test)
        counts["false_detections"] = _write_false_detections(building, spec, cameras, frames)
        (building / MANIFEST).write_text(json.dumps(_manifest(spec, counts), indent=2) + "\n")
        _replace_folder(building, target)
    finally:
        if building.exists():
            shutil.rmtree(building)
    return target


def _replace_folder(new: Path, target: Path) -> None:
    """Put ``new`` at ``target``; an old ``target`` is moved aside first and removed last."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _manifest_key(spec: DomainSpec) -> dict[str, Any]:
    return {"generator_version": GENERATOR_VERSION, "spec": spec.to_json()}


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """``{"generator_version", "spec"}`` of a generated folder, or None if there is none."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return {"generator_version": manifest.get("generator_version"), "spec": manifest.get("spec")}


def ensure_domain(data_root: str | os.PathLike, domain: str, **overrides: Any) -> Path:
    """The folder of ``domain``, generated on first use.

    Without overrides, any complete generation of this domain by this generator version is used
    as it is (so ``udareid synth --num-train-ids 50`` sets the size later runs see); with
    overrides, the folder must match them and is regenerated if it does not.
    """
    spec = resolve_spec(domain, **overrides)
    target = Path(data_root).expanduser() / spec.folder
    found = read_manifest(target)
    if found is not None and found["generator_version"] == GENERATOR_VERSION:
        if not overrides and found["spec"] and found["spec"].get("name") == spec.name:
            return target
        if found == _manifest_key(spec):
            return target
    return generate_domain(data_root, spec, overwrite=True)


def save_montage(folder: str | os.PathLike, out_png: str | os.PathLike, n: int = 8, per_id: int = 12) -> Path:
    """A grid of training images, one row per identity (the first ``n`` ids), for a quick look."""
    folder = Path(folder)
    by_id: dict[str, list[Path]] = {}
    for path in sorted((folder / "bounding_box_train").glob("*.jpg")):
        by_id.setdefault(path.name.split("_")[0], []).append(path)
    rows = [paths[:per_id] for _, paths in sorted(by_id.items())[:n]]
    if not rows:
        raise FileNotFoundError(f"no training images in {folder / 'bounding_box_train'}")
    width, height = Image.open(rows[0][0]).size
    sheet = Image.new("RGB", (per_id * (width + 2), len(rows) * (height + 2)), (255, 255, 255))
    for r, paths in enumerate(rows):
        for c, path in enumerate(paths):
            with Image.open(path) as image:
                sheet.paste(image.convert("RGB"), (c * (width + 2), r * (height + 2)))
    with atomic_path(out_png) as tmp:
        sheet.save(tmp, format="PNG")
    return Path(out_png)
