"""What a synthetic person looks like (identity) and how one sighting of them differs (view).

An :class:`Identity` holds everything that stays the same across a person's images (clothes,
hair, skin, build, bag); a :class:`View` holds what changes from image to image (viewpoint,
walking phase, framing, tilt, occluder). Colours are drawn from shared, weighted palettes with a
small per-person jitter, so many people share similar colours and only the combination of
attributes identifies someone, as in real footage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RGB = tuple[int, int, int]

VIEWPOINTS = ("front", "back", "left", "right")  # left/right: the person walks towards that side

# name: (colour, weight as an upper garment, weight as a lower garment). Dark and neutral clothes
# dominate, as in street footage, so colour alone rarely tells two people apart.
CLOTHING_PALETTE: dict[str, tuple[RGB, float, float]] = {
    "black": ((28, 28, 32), 3.0, 3.0),
    "charcoal": ((62, 62, 68), 2.0, 1.6),
    "grey": ((122, 122, 128), 1.5, 1.2),
    "light_grey": ((182, 182, 184), 1.0, 0.4),
    "white": ((236, 236, 230), 2.2, 0.4),
    "navy": ((32, 42, 88), 1.5, 1.6),
    "blue": ((48, 88, 172), 1.0, 0.6),
    "light_blue": ((132, 172, 216), 1.0, 0.4),
    "denim": ((72, 98, 142), 0.5, 3.0),
    "red": ((186, 38, 42), 1.0, 0.3),
    "dark_red": ((116, 28, 38), 0.7, 0.3),
    "pink": ((230, 142, 172), 0.7, 0.2),
    "orange": ((232, 124, 42), 0.5, 0.1),
    "yellow": ((232, 202, 64), 0.6, 0.1),
    "green": ((52, 132, 64), 0.7, 0.3),
    "olive": ((102, 106, 58), 0.6, 0.8),
    "teal": ((32, 126, 132), 0.5, 0.2),
    "purple": ((112, 62, 142), 0.6, 0.2),
    "brown": ((112, 76, 46), 0.8, 0.8),
    "beige": ((206, 186, 148), 1.0, 1.0),
    "khaki": ((166, 152, 106), 0.6, 1.2),
}
SKIN_TONES: tuple[RGB, ...] = (
    (250, 222, 196),
    (238, 196, 162),
    (222, 172, 132),
    (196, 140, 102),
    (160, 106, 72),
    (112, 72, 48),
    (84, 56, 38),
)
HAIR_COLOURS: dict[str, tuple[RGB, float]] = {
    "black": ((22, 20, 20), 4.0),
    "dark_brown": ((56, 36, 26), 3.0),
    "brown": ((102, 66, 40), 1.5),
    "blonde": ((204, 168, 102), 0.8),
    "grey": ((152, 150, 148), 0.5),
    "auburn": ((132, 56, 30), 0.5),
}
SHOE_COLOURS: dict[str, tuple[RGB, float]] = {
    "black": ((24, 24, 26), 4.0),
    "white": ((232, 232, 228), 3.0),
    "grey": ((118, 118, 122), 1.0),
    "brown": ((92, 58, 34), 1.0),
    "red": ((180, 40, 40), 0.3),
    "blue": ((50, 80, 160), 0.3),
}
UPPER_PATTERNS = {"plain": 0.5, "stripes": 0.2, "checks": 0.12, "logo": 0.18}
LOWER_KINDS = {"trousers": 0.65, "shorts": 0.2, "skirt": 0.15}
HAIR_LENGTHS = {"short": 0.5, "medium": 0.25, "long": 0.25}
ACCESSORIES = {"none": 0.45, "backpack": 0.25, "shoulder_bag": 0.18, "handbag": 0.12}
LOGO_SHAPES = ("circle", "square", "triangle", "bar")
OCCLUDER_KINDS = {"pole": 0.3, "car": 0.25, "passer_by": 0.3, "bush": 0.15}
COLOUR_JITTER = 14  # per-person deviation of each channel from the palette colour


@dataclass(frozen=True)
class Identity:
    """The stable appearance of one person: the same in every image of that person.

    `accessory_side` is +1 for the person's left, -1 for their right (it flips with the viewpoint).
    `build` scales body width (1 = average).
    """

    person_id: int
    skin: RGB
    hair_colour: RGB
    hair_length: str
    hat_colour: RGB | None
    upper_colour: RGB
    upper_accent: RGB  # stripes / checks / logo colour
    upper_pattern: str
    pattern_bands: int  # number of stripes / check rows
    logo_shape: str
    long_sleeves: bool
    lower_colour: RGB
    lower_kind: str
    shoe_colour: RGB
    build: float
    leg_length: float  # fraction of the body height below the hips
    accessory: str
    accessory_colour: RGB
    accessory_side: int


@dataclass(frozen=True)
class Occluder:
    """Something between the camera and the person. `x` is its centre as a fraction of the width;
    `extent` is its width (pole, passer-by) or height (car, bush) as a fraction of the crop."""

    kind: str
    x: float
    extent: float
    colour: RGB


@dataclass(frozen=True)
class View:
    """One sighting: where the person stands in the crop and in what pose.

    Positions are fractions of the crop (0..1); `walk_phase` is in radians, `stride` in 0..1
    (0 = standing); `rotation` in degrees; `brightness` a factor; `light_gradient` the relative
    light change across the crop along x and y. `background_offset` is where the crop sits in the
    camera's scene (fractions of the free range).
    """

    viewpoint: str
    walk_phase: float
    stride: float
    person_height: float
    center_x: float
    foot_y: float
    rotation: float
    brightness: float
    light_gradient: tuple[float, float]
    background_offset: tuple[float, float]
    occluder: Occluder | None


def _weighted_choice(rng: np.random.Generator, weights: dict[str, float]) -> str:
    names = list(weights)
    probabilities = np.array([weights[name] for name in names], dtype=np.float64)
    return names[int(rng.choice(len(names), p=probabilities / probabilities.sum()))]


def _jitter(rng: np.random.Generator, colour: RGB, amount: int = COLOUR_JITTER) -> RGB:
    shifted = np.asarray(colour) + rng.integers(-amount, amount + 1, size=3)
    return tuple(int(v) for v in np.clip(shifted, 0, 255))  # type: ignore[return-value]


def _clothing_colour(rng: np.random.Generator, column: int, avoid: RGB | None = None) -> RGB:
    """A palette colour (column 1: upper, 2: lower weights), away from `avoid` when given."""
    weights = {name: entry[column] for name, entry in CLOTHING_PALETTE.items()}
    if avoid is not None:  # accents must contrast with the garment they sit on
        weights = {
            name: weight
            for name, weight in weights.items()
            if np.abs(np.subtract(CLOTHING_PALETTE[name][0], avoid)).sum() > 150
        }
    return _jitter(rng, CLOTHING_PALETTE[_weighted_choice(rng, weights)][0])


def sample_identity(rng: np.random.Generator, person_id: int) -> Identity:
    """Draw a person's stable appearance; all randomness comes from `rng`."""
    upper = _clothing_colour(rng, 1)
    hair_name = _weighted_choice(rng, {name: w for name, (_, w) in HAIR_COLOURS.items()})
    shoe_name = _weighted_choice(rng, {name: w for name, (_, w) in SHOE_COLOURS.items()})
    return Identity(
        person_id=person_id,
        skin=_jitter(rng, SKIN_TONES[int(rng.integers(len(SKIN_TONES)))], 8),
        hair_colour=_jitter(rng, HAIR_COLOURS[hair_name][0], 10),
        hair_length=_weighted_choice(rng, HAIR_LENGTHS),
        hat_colour=_clothing_colour(rng, 1) if rng.random() < 0.12 else None,
        upper_colour=upper,
        upper_accent=_clothing_colour(rng, 1, avoid=upper),
        upper_pattern=_weighted_choice(rng, UPPER_PATTERNS),
        pattern_bands=int(rng.integers(4, 8)),
        logo_shape=LOGO_SHAPES[int(rng.integers(len(LOGO_SHAPES)))],
        long_sleeves=bool(rng.random() < 0.55),
        lower_colour=_clothing_colour(rng, 2),
        lower_kind=_weighted_choice(rng, LOWER_KINDS),
        shoe_colour=_jitter(rng, SHOE_COLOURS[shoe_name][0], 10),
        build=float(rng.uniform(0.85, 1.2)),
        leg_length=float(rng.uniform(0.47, 0.53)),
        accessory=_weighted_choice(rng, ACCESSORIES),
        accessory_colour=_clothing_colour(rng, 1),
        accessory_side=1 if rng.random() < 0.5 else -1,
    )


def sample_occluder(rng: np.random.Generator) -> Occluder:
    """A random occluder; it sits over one side of the person so the rest stays visible."""
    kind = _weighted_choice(rng, OCCLUDER_KINDS)
    side = 1 if rng.random() < 0.5 else -1
    if kind == "pole":
        x, extent = 0.5 + side * rng.uniform(0.1, 0.4), rng.uniform(0.08, 0.16)
        colour = _jitter(rng, ((90, 92, 96), (150, 150, 150), (60, 70, 60))[int(rng.integers(3))])
    elif kind == "passer_by":
        x, extent = 0.5 + side * rng.uniform(0.38, 0.55), rng.uniform(0.3, 0.45)
        colour = _clothing_colour(rng, 1)
    elif kind == "car":
        x, extent = 0.5 + side * rng.uniform(0.0, 0.4), rng.uniform(0.25, 0.42)
        colour = _clothing_colour(rng, 1)
    else:  # bush
        x, extent = 0.5 + side * rng.uniform(0.1, 0.45), rng.uniform(0.2, 0.35)
        colour = _jitter(rng, (58, 104, 50), 20)
    return Occluder(kind=kind, x=float(x), extent=float(extent), colour=colour)


def sample_view(
    rng: np.random.Generator,
    *,
    viewpoint: str,
    walk_phase: float,
    person_height: tuple[float, float],
    box_jitter: float,
    rotation_degrees: float,
    brightness_jitter: float,
    light_gradient: float,
    occluder_probability: float,
) -> View:
    """Per-image pose, framing and light; `viewpoint` and `walk_phase` come from the tracklet."""
    return View(
        viewpoint=viewpoint,
        walk_phase=float(walk_phase),
        stride=float(rng.uniform(0.5, 1.0)),
        person_height=float(rng.uniform(*person_height)),
        center_x=float(0.5 + rng.uniform(-1.0, 1.0) * box_jitter),
        foot_y=float(0.985 + rng.uniform(-1.0, 0.6) * box_jitter * 0.6),
        rotation=float(rng.uniform(-1.0, 1.0) * rotation_degrees),
        brightness=float(1.0 + rng.uniform(-1.0, 1.0) * brightness_jitter),
        light_gradient=(
            float(rng.uniform(-1.0, 1.0) * light_gradient),
            float(rng.uniform(-1.0, 1.0) * light_gradient),
        ),
        background_offset=(float(rng.random()), float(rng.random())),
        occluder=sample_occluder(rng) if rng.random() < occluder_probability else None,
    )
