"""The two built-in synthetic domains and how each one renders.

A domain is a set of identities (fixed by its seed) plus a *style*: the rendering conditions that
make a whole domain look different from another one (studio-clean vs. street-camera footage). The
style is what a model trained on one domain has to adapt to; identities are what it has to find.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from ...errors import ConfigError, UnknownNameError

MAX_PERSON_ID = 9999  # person ids are written with 4 digits
MAX_CAMERAS = 9  # Market's camera field `c(\d)` has one digit
MIN_IMAGES_PER_ID = 4  # two cameras with at least two images each: a query keeps a cross-camera match


@dataclass(frozen=True, kw_only=True)
class DomainStyle:
    """How a domain renders. Ranges are `(low, high)`; "per camera" values are drawn once per camera.

    Colour and light fields are multiplicative factors (1 = unchanged). Sizes are in pixels of the
    stored image. A camera's colour cast, brightness, saturation, contrast, blur and resolution are
    fixed for that camera (like a real installation); the per-image fields add jitter on top.
    """

    background: Literal["studio", "street"]  # plain/gradient backdrop | per-camera cluttered scene
    camera_colour_cast: float = 0.0  # max deviation of a camera's per-channel gain from 1
    camera_brightness: tuple[float, float] = (1.0, 1.0)
    camera_saturation: tuple[float, float] = (1.0, 1.0)
    camera_contrast: tuple[float, float] = (1.0, 1.0)
    camera_blur: tuple[float, float] = (0.0, 0.0)  # Gaussian blur radius of a camera (pixels)
    camera_resolution: tuple[float, float] = (1.0, 1.0)  # down-then-up sampling factor of a camera
    brightness_jitter: float = 0.0  # per image: brightness factor in 1 ± jitter
    light_gradient: float = 0.0  # per image: linear light fall-off across the crop, max relative change
    sensor_noise: float = 0.0  # per image: std of Gaussian pixel noise (0..255 scale)
    jpeg_quality: tuple[int, int] = (95, 95)  # per image JPEG quality range (inclusive)
    occluder_probability: float = 0.05  # chance that a pole / car / passer-by / bush covers part
    box_jitter: float = 0.02  # detector-box looseness: translation as a fraction of the crop size
    person_height: tuple[float, float] = (0.88, 0.95)  # person height as a fraction of crop height
    rotation_degrees: float = 2.0  # max in-plane tilt of the person


@dataclass(frozen=True, kw_only=True)
class DomainSpec:
    """Everything that determines a generated domain: same spec (and generator version) -> same files."""

    name: str  # "synthx" | "synthm"
    folder: str  # folder under the data root, e.g. "SynthX"
    num_train_ids: int
    num_test_ids: int
    images_per_id: tuple[int, int]  # min, max images per identity (inclusive)
    num_cameras: int = 6  # cameras c1..cN
    height: int = 128  # stored image size (real Market crops are 128x64)
    width: int = 64
    seed: int
    style: DomainStyle
    distractors_per_test_id: float = 0.3  # gallery images with person id 0000 (non-person crops)
    junk_per_test_id: float = 0.15  # gallery images with person id -1 (bad detections)
    query_cameras_per_id: int = 2  # one query image per camera, for up to this many cameras per test id

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form (tuples become lists) as stored in, and compared with, manifest.json."""
        return _jsonable(dataclasses.asdict(self))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


SYNTHX_STYLE = DomainStyle(
    background="studio",
    brightness_jitter=0.04,
    jpeg_quality=(92, 95),
    occluder_probability=0.06,
    box_jitter=0.02,
    person_height=(0.88, 0.94),
    rotation_degrees=1.5,
)

SYNTHM_STYLE = DomainStyle(
    background="street",
    camera_colour_cast=0.08,
    camera_brightness=(0.7, 1.15),
    camera_saturation=(0.65, 0.95),
    camera_contrast=(0.75, 0.95),
    camera_blur=(0.3, 0.7),
    camera_resolution=(0.5, 0.8),
    brightness_jitter=0.1,
    light_gradient=0.2,
    sensor_noise=3.0,
    jpeg_quality=(40, 70),
    occluder_probability=0.25,
    box_jitter=0.05,
    person_height=(0.82, 0.97),
    rotation_degrees=3.5,
)

DOMAINS: dict[str, DomainSpec] = {
    "synthx": DomainSpec(
        name="synthx",
        folder="SynthX",
        num_train_ids=150,
        num_test_ids=150,
        images_per_id=(8, 16),
        seed=1,
        style=SYNTHX_STYLE,
    ),
    "synthm": DomainSpec(
        name="synthm",
        folder="SynthM",
        num_train_ids=150,
        num_test_ids=150,
        images_per_id=(8, 16),
        seed=2,
        style=SYNTHM_STYLE,
    ),
}


def resolve_spec(
    domain: str | DomainSpec,
    *,
    num_train_ids: int | None = None,
    num_test_ids: int | None = None,
    images_per_id: tuple[int, int] | None = None,
    seed: int | None = None,
) -> DomainSpec:
    """The spec of a built-in domain name (or a given spec) with overrides applied, validated."""
    if isinstance(domain, DomainSpec):
        spec = domain
    else:
        if domain not in DOMAINS:
            known = ", ".join(sorted(DOMAINS))
            raise UnknownNameError(f"unknown synthetic domain {domain!r} for --domain; known: {known}")
        spec = DOMAINS[domain]
    changes: dict[str, Any] = {}
    if num_train_ids is not None:
        changes["num_train_ids"] = num_train_ids
    if num_test_ids is not None:
        changes["num_test_ids"] = num_test_ids
    if images_per_id is not None:
        changes["images_per_id"] = tuple(images_per_id)
    if seed is not None:
        changes["seed"] = seed
    spec = dataclasses.replace(spec, **changes)
    validate_spec(spec)
    return spec


def validate_spec(spec: DomainSpec) -> None:
    """Raise ConfigError naming the option when a spec cannot produce a Market-style folder."""

    def fail(option: str, expected: str, received: Any) -> None:
        raise ConfigError(f"synthetic domain {spec.name!r}: {option} must be {expected}, got {received!r}")

    for option in ("num_train_ids", "num_test_ids", "num_cameras", "height", "width", "seed"):
        if not isinstance(getattr(spec, option), int) or isinstance(getattr(spec, option), bool):
            fail(option, "an integer", getattr(spec, option))
    if spec.num_train_ids < 1:
        fail("num_train_ids", ">= 1", spec.num_train_ids)
    if spec.num_test_ids < 1:
        fail("num_test_ids", ">= 1", spec.num_test_ids)
    if spec.num_train_ids + spec.num_test_ids > MAX_PERSON_ID:
        fail(
            "num_train_ids + num_test_ids",
            f"<= {MAX_PERSON_ID} (4-digit person ids)",
            spec.num_train_ids + spec.num_test_ids,
        )
    if not 2 <= spec.num_cameras <= MAX_CAMERAS:
        fail("num_cameras", f"between 2 and {MAX_CAMERAS}", spec.num_cameras)
    low_high = spec.images_per_id
    if (
        len(low_high) != 2
        or not all(isinstance(v, int) for v in low_high)
        or not MIN_IMAGES_PER_ID <= low_high[0] <= low_high[1]
    ):
        fail("images_per_id", f"(min, max) integers with {MIN_IMAGES_PER_ID} <= min <= max", low_high)
    if spec.height < 32 or spec.width < 16:
        fail("height x width", "at least 32 x 16 pixels", (spec.height, spec.width))
    if spec.seed < 0:
        fail("seed", ">= 0", spec.seed)
    if spec.query_cameras_per_id < 1:
        fail("query_cameras_per_id", ">= 1", spec.query_cameras_per_id)
    if spec.distractors_per_test_id < 0 or spec.junk_per_test_id < 0:
        fail(
            "distractors_per_test_id / junk_per_test_id",
            ">= 0",
            (spec.distractors_per_test_id, spec.junk_per_test_id),
        )
