"""Write a synthetic domain to disk in exactly Market-1501's layout, atomically and reproducibly.

Generation is planned first (who appears in which camera at which frame, which images become
queries), then rendered image by image. Every random draw comes from a numpy Generator seeded by
(domain seed, domain name, role, person id, image index), never from global state, so the same
spec gives byte-identical files and a person looks the same whatever the number of people.

The domain is written to a sibling folder `<folder>.tmp-XXXX` and renamed into place when
complete, with `manifest.json` written last: a crash leaves at most a `.tmp-` folder, never a
half-filled folder under the real name.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ...errors import ConfigError, DatasetLayoutError
from .appearance import VIEWPOINTS, Identity, View, sample_identity, sample_occluder, sample_view
from .cameras import CameraLook, build_camera
from .domains import DomainSpec, resolve_spec
from .render import SUPERSAMPLE, render_non_person, render_person

GENERATOR_VERSION = 2  # bump whenever the same spec would produce different images
MANIFEST_NAME = "manifest.json"
TRAIN_SPLIT, QUERY_SPLIT, GALLERY_SPLIT = "bounding_box_train", "query", "bounding_box_test"
DISTRACTOR_PID, JUNK_PID = 0, -1
MAX_FRAME = 999_999  # frames are written with 6 digits
TRACKLET_KEEP_VIEWPOINT = 0.8  # chance that the next frame of a tracklet keeps the viewpoint

# roles separate the random streams of different things drawn from one seed
_ROLE_CAMERA, _ROLE_IDENTITY, _ROLE_IMAGE, _ROLE_DISTRACTOR, _ROLE_JUNK = range(5)


@dataclass(frozen=True)
class PlannedImage:
    """One file to write: where it goes, what it shows, and the entropy of its random stream."""

    split: str
    person_id: int  # 0 = distractor, -1 = junk
    camera: int  # 1-based
    frame: int
    index: int
    viewpoint: str
    walk_phase: float
    entropy: tuple[int, ...]

    @property
    def file_name(self) -> str:
        pid = "-1" if self.person_id == JUNK_PID else f"{self.person_id:04d}"
        return f"{pid}_c{self.camera}s1_{self.frame:06d}_{self.index:02d}.jpg"


def _root_entropy(spec: DomainSpec) -> list[int]:
    """Seed plus domain name: two domains never share identities, even with the same seed."""
    return [spec.seed, zlib.crc32(spec.name.encode("utf-8"))]


def _rng(spec: DomainSpec, *key: int) -> np.random.Generator:
    return np.random.default_rng(_root_entropy(spec) + list(key))


def build_cameras(spec: DomainSpec) -> list[CameraLook]:
    """The domain's cameras c1..cN with their fixed looks (and street scenes)."""
    render_size = (spec.width * SUPERSAMPLE, spec.height * SUPERSAMPLE)
    variants = _rng(spec, _ROLE_CAMERA, 0).permutation(spec.num_cameras)  # distinct casts and facades
    return [
        build_camera(
            _rng(spec, _ROLE_CAMERA, index), index, spec.style, render_size, int(variants[index - 1])
        )
        for index in range(1, spec.num_cameras + 1)
    ]


def identity_of(spec: DomainSpec, person_id: int) -> Identity:
    """Person `person_id`'s appearance (the first draws of that person's random stream)."""
    return sample_identity(_rng(spec, _ROLE_IDENTITY, person_id), person_id)


class _FrameClock:
    """Per-camera frame counters that only move forward, so (camera, frame) never repeats."""

    def __init__(self, num_cameras: int) -> None:
        self.frames = dict.fromkeys(range(1, num_cameras + 1), 0)

    def advance(self, camera: int, step: int) -> int:
        self.frames[camera] += step
        if self.frames[camera] > MAX_FRAME:
            raise ConfigError(
                f"too many images for camera c{camera}: frame numbers exceed {MAX_FRAME} "
                f"(6 digits); reduce num_train_ids/num_test_ids or images_per_id"
            )
        return self.frames[camera]


def plan_domain(spec: DomainSpec, cameras: list[CameraLook]) -> list[PlannedImage]:
    """Every image of the domain: train ids 1..T, test ids T+1..T+S, then distractors and junk.

    Each person is seen by 2+ cameras with at least two images each (one tracklet per camera);
    a test person gives one query per camera for up to `query_cameras_per_id` cameras, so every
    query keeps a same-id gallery image in another camera.
    """
    clock = _FrameClock(spec.num_cameras)
    plan: list[PlannedImage] = []
    low, high = spec.images_per_id
    for person_id in range(1, spec.num_train_ids + spec.num_test_ids + 1):
        rng = _rng(spec, _ROLE_IDENTITY, person_id)
        sample_identity(rng, person_id)  # the identity's draws come first in this stream
        num_images = int(rng.integers(low, high + 1))
        num_cams = int(rng.integers(2, min(spec.num_cameras, num_images // 2) + 1))
        cams = sorted(int(c) + 1 for c in rng.choice(spec.num_cameras, size=num_cams, replace=False))
        per_camera = 2 + rng.multinomial(num_images - 2 * num_cams, np.full(num_cams, 1.0 / num_cams))
        is_test = person_id > spec.num_train_ids
        query_cams = (
            {int(c) for c in rng.choice(cams, size=min(spec.query_cameras_per_id, num_cams), replace=False)}
            if is_test
            else set()
        )
        image_index = 0
        for cam, count in zip(cams, per_camera):
            weights = np.asarray(cameras[cam - 1].viewpoint_weights)
            viewpoint = VIEWPOINTS[int(rng.choice(len(VIEWPOINTS), p=weights / weights.sum()))]
            phase = float(rng.uniform(0.0, 2 * math.pi))
            query_position = int(rng.integers(count)) if cam in query_cams else -1
            clock.advance(cam, int(rng.integers(10, 150)))
            for position in range(int(count)):
                if rng.random() > TRACKLET_KEEP_VIEWPOINT:
                    viewpoint = VIEWPOINTS[int(rng.integers(len(VIEWPOINTS)))]
                step = int(rng.integers(2, 10))
                phase += 0.45 * step
                split = (
                    TRAIN_SPLIT
                    if not is_test
                    else QUERY_SPLIT
                    if position == query_position
                    else GALLERY_SPLIT
                )
                plan.append(
                    PlannedImage(
                        split,
                        person_id,
                        cam,
                        clock.advance(cam, step),
                        0,
                        viewpoint,
                        phase % (2 * math.pi),
                        (_ROLE_IMAGE, person_id, image_index),
                    )
                )
                image_index += 1
    for role, pid, per_test_id in (
        (_ROLE_DISTRACTOR, DISTRACTOR_PID, spec.distractors_per_test_id),
        (_ROLE_JUNK, JUNK_PID, spec.junk_per_test_id),
    ):
        for k in range(round(per_test_id * spec.num_test_ids)):
            rng = _rng(spec, role, k, 0)
            cam = int(rng.integers(1, spec.num_cameras + 1))
            frame = clock.advance(cam, int(rng.integers(3, 60)))
            plan.append(
                PlannedImage(
                    GALLERY_SPLIT,
                    pid,
                    cam,
                    frame,
                    int(rng.integers(1, 4)),
                    VIEWPOINTS[int(rng.integers(len(VIEWPOINTS)))],
                    float(rng.uniform(0.0, 2 * math.pi)),
                    (role, k, 1),
                )
            )
    return plan


def _view(spec: DomainSpec, item: PlannedImage, rng: np.random.Generator) -> View:
    style = spec.style
    return sample_view(
        rng,
        viewpoint=item.viewpoint,
        walk_phase=item.walk_phase,
        person_height=style.person_height,
        box_jitter=style.box_jitter,
        rotation_degrees=style.rotation_degrees,
        brightness_jitter=style.brightness_jitter,
        light_gradient=style.light_gradient,
        occluder_probability=style.occluder_probability,
    )


def render_planned(
    spec: DomainSpec, item: PlannedImage, cameras: list[CameraLook], identities: dict[int, Identity]
) -> tuple[Any, int]:
    """The image of one planned file and its JPEG quality."""
    rng = _rng(spec, *item.entropy)
    camera, size = cameras[item.camera - 1], (spec.width, spec.height)
    view = _view(spec, item, rng)
    if item.person_id > 0:
        image = render_person(
            identities[item.person_id], view, camera=camera, style=spec.style, rng=rng, size=size
        )
    else:
        stranger = sample_identity(rng, item.person_id)
        if (
            item.person_id == DISTRACTOR_PID
        ):  # a false detection: objects, at most a large fragment of someone
            with_fragment = rng.random() < 0.5
            view = dataclasses.replace(
                view,
                person_height=float(rng.uniform(1.6, 2.4)),
                center_x=float(rng.uniform(0.0, 1.0)),
                foot_y=float(rng.uniform(1.0, 2.0)),
                occluder=sample_occluder(rng),
            )
            image = render_non_person(
                "distractor",
                view,
                camera=camera,
                style=spec.style,
                rng=rng,
                size=size,
                stranger=stranger if with_fragment else None,
            )
        else:  # junk: someone far away in a loose box, or a box cut off at the chest
            if rng.random() < 0.5:
                view = dataclasses.replace(
                    view,
                    person_height=float(rng.uniform(0.3, 0.45)),
                    center_x=float(rng.uniform(0.25, 0.75)),
                    foot_y=float(rng.uniform(0.55, 0.95)),
                )
            else:
                view = dataclasses.replace(
                    view,
                    person_height=float(rng.uniform(0.95, 1.2)),
                    center_x=float(rng.uniform(0.1, 0.9)),
                    foot_y=float(rng.uniform(1.35, 1.7)),
                )
            image = render_non_person(
                "junk", view, camera=camera, style=spec.style, rng=rng, size=size, stranger=stranger
            )
    quality = int(rng.integers(spec.style.jpeg_quality[0], spec.style.jpeg_quality[1] + 1))
    return image, quality


def _counts(plan: list[PlannedImage], spec: DomainSpec) -> dict[str, int]:
    per_split = Counter(item.split for item in plan)
    return {
        "train_ids": spec.num_train_ids,
        "test_ids": spec.num_test_ids,
        "train_images": per_split[TRAIN_SPLIT],
        "query_images": per_split[QUERY_SPLIT],
        "gallery_images": per_split[GALLERY_SPLIT],
        "gallery_distractors": sum(item.person_id == DISTRACTOR_PID for item in plan),
        "gallery_junk": sum(item.person_id == JUNK_PID for item in plan),
    }


def _manifest(spec: DomainSpec, counts: dict[str, int]) -> dict[str, Any]:
    return {
        "generator": "uda_reid.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "layout": "Market-1501 (bounding_box_train/, query/, bounding_box_test/)",
        "parameters": spec.to_json(),
        "counts": counts,
    }


def _write_json_atomically(path: Path, content: dict[str, Any]) -> None:
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(content, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _move_into_place(staging: Path, target: Path) -> None:
    """Rename the finished `staging` folder to `target`, replacing an older `target` if any."""
    retired = None
    if target.exists():
        retired = Path(tempfile.mkdtemp(prefix=f"{target.name}.old-", dir=target.parent))
        os.replace(target, retired / target.name)
    try:
        os.replace(staging, target)
    except BaseException:
        if retired is not None:  # put the previous version back rather than leave nothing
            os.replace(retired / target.name, target)
            shutil.rmtree(retired, ignore_errors=True)
        raise
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)


def generate_domain(
    data_root: Path | str,
    domain: str | DomainSpec,
    *,
    num_train_ids: int | None = None,
    num_test_ids: int | None = None,
    images_per_id: tuple[int, int] | None = None,
    seed: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Generate `domain` ("synthx", "synthm" or a DomainSpec) under `data_root`; returns its folder.

    An existing folder is an error unless `overwrite` (use :func:`ensure_domain` to reuse one).
    """
    spec = resolve_spec(
        domain, num_train_ids=num_train_ids, num_test_ids=num_test_ids, images_per_id=images_per_id, seed=seed
    )
    data_root = Path(data_root).expanduser()
    target = data_root / spec.folder
    if target.exists() and not overwrite:
        raise DatasetLayoutError(
            f"{target} already exists; pass overwrite=True to regenerate it (or use ensure_domain / "
            f"`udareid synth`, which reuse a folder generated with the same parameters)"
        )
    data_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{spec.folder}.tmp-", dir=data_root))
    try:
        cameras = build_cameras(spec)
        plan = plan_domain(spec, cameras)
        identities = {
            pid: identity_of(spec, pid) for pid in range(1, spec.num_train_ids + spec.num_test_ids + 1)
        }
        for split in (TRAIN_SPLIT, QUERY_SPLIT, GALLERY_SPLIT):
            (staging / split).mkdir()
        for item in tqdm(plan, desc=f"generating {spec.name}", unit="img", disable=not progress):
            image, quality = render_planned(spec, item, cameras, identities)
            image.save(staging / item.split / item.file_name, format="JPEG", quality=quality, subsampling=2)
        _write_json_atomically(staging / MANIFEST_NAME, _manifest(spec, _counts(plan, spec)))
        _move_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def read_manifest(folder: Path | str) -> dict[str, Any] | None:
    """The manifest of a generated domain folder, or None when the folder has none."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetLayoutError(
            f"{path} is not a readable JSON manifest ({error}); delete {path.parent} "
            f"to regenerate the synthetic domain"
        ) from None
    if not isinstance(manifest, dict) or "parameters" not in manifest:
        raise DatasetLayoutError(
            f"{path} has no 'parameters' entry; expected a uda_reid synthetic-domain "
            f"manifest. Delete {path.parent} to regenerate it"
        )
    return manifest


_ENSURE_OPTIONS = ("num_train_ids", "num_test_ids", "images_per_id", "seed", "progress")


def ensure_domain(data_root: Path | str, domain: str | DomainSpec, **overrides: Any) -> Path:
    """The folder of `domain` under `data_root`, generated on first use.

    Reused when its manifest records the same parameters and generator version; regenerated
    (atomically) when they differ. Without size/seed overrides, any complete generation of this
    domain by this generator version is reused, so the size chosen with ``udareid synth
    --num-train-ids N`` is what later runs see. A folder without a manifest was not made by this generator
    and is never deleted: that is an error. Overrides: num_train_ids, num_test_ids,
    images_per_id, seed, progress.
    """
    unknown = sorted(set(overrides) - set(_ENSURE_OPTIONS))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} for synthetic domain {domain!r}; "
            f"known: {', '.join(_ENSURE_OPTIONS)}"
        )
    progress = bool(overrides.pop("progress", True))
    explicit = {key: value for key, value in overrides.items() if value is not None}
    spec = resolve_spec(domain, **overrides)
    target = Path(data_root).expanduser() / spec.folder
    if target.exists():
        manifest = read_manifest(target)
        if manifest is None:
            raise DatasetLayoutError(
                f"{target} exists but has no {MANIFEST_NAME}, so it was not written by the synthetic "
                f"generator; "
                f"move it away or choose another --data-root (it is never deleted automatically)"
            )
        if manifest.get("generator_version") == GENERATOR_VERSION:
            if manifest["parameters"] == spec.to_json():
                return target
            if not explicit and manifest["parameters"].get("name") == spec.name:
                return target
    return generate_domain(data_root, spec, overwrite=True, progress=progress)
