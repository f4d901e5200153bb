"""Cameras of a synthetic domain: their fixed look (colour cast, light, optics) and backgrounds.

Real re-ID cameras differ systematically (one is bluish and blurry, another overexposed and sees
a brick wall); that camera shift is a large part of the domain gap and of the intra-domain
difficulty. Each camera therefore gets a fixed :class:`CameraLook` drawn once from the domain
style, and, for street-style domains, a fixed scene from which every background is cropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .appearance import RGB, VIEWPOINTS, View
from .domains import DomainStyle

SCENE_WIDTH_IN_CROPS = 5  # a street scene is this many crops wide: backgrounds vary within a camera
SCENE_HEIGHT_MARGIN = 0.25  # and this much taller than a crop
SCENE_CONTRAST = 0.35  # scenes are seen through haze and distance: less contrast than the person

# Directions of a camera's colour cast (R, G, B gain offsets): sodium-warm, shade-blue, fluorescent
# green, magenta, yellow, slightly cold. Cameras of a domain take different ones.
CAST_DIRECTIONS: tuple[tuple[float, float, float], ...] = (
    (1.0, 0.15, -1.0),
    (-0.8, 0.0, 1.0),
    (-0.5, 1.0, -0.5),
    (0.7, -1.0, 0.7),
    (0.6, 0.5, -1.0),
    (-0.3, 0.1, 0.4),
)
WALL_KINDS = ("brick", "windows", "shopfront", "trees", "panels")
GROUND_KINDS = ("tiles", "asphalt", "paving")

STUDIO_COLOURS: tuple[RGB, ...] = (
    (214, 214, 210),
    (226, 216, 196),
    (196, 212, 228),
    (204, 222, 204),
    (218, 208, 226),
    (236, 234, 226),
    (232, 226, 192),
    (190, 222, 220),
    (200, 200, 206),
)


@dataclass(frozen=True, eq=False)
class CameraLook:
    """The fixed rendering conditions of one camera (index 1-based, as in the file names).

    `gains` is the per-channel colour cast (R, G, B); `viewpoint_weights` follow `VIEWPOINTS` (a
    camera mounted along a corridor mostly sees fronts and backs); `scene` is the street scene at
    render resolution that backgrounds are cropped from, or None for studio backdrops.
    """

    index: int
    gains: tuple[float, float, float]
    brightness: float
    saturation: float
    contrast: float
    blur: float
    resolution: float
    viewpoint_weights: tuple[float, float, float, float]
    scene: Image.Image | None


def build_camera(
    rng: np.random.Generator, index: int, style: DomainStyle, render_size: tuple[int, int], variant: int = 0
) -> CameraLook:
    """Draw camera `index`'s fixed look from the domain style. `render_size` is (width, height).

    `variant` picks the cast direction and the scene's facade, so that the cameras of one domain
    (given distinct variants) differ visibly instead of by chance.
    """
    direction = np.asarray(CAST_DIRECTIONS[variant % len(CAST_DIRECTIONS)])
    cast = style.camera_colour_cast * rng.uniform(0.7, 1.0) * direction
    gains = 1.0 + cast - cast.mean()  # a hue shift; brightness is its own factor
    viewpoint_weights = rng.dirichlet(np.full(len(VIEWPOINTS), 1.5)) + 0.08
    viewpoint_weights /= viewpoint_weights.sum()
    scene = None
    if style.background == "street":
        width, height = render_size
        scene = paint_street_scene(
            rng,
            width * SCENE_WIDTH_IN_CROPS,
            round(height * (1.0 + SCENE_HEIGHT_MARGIN)),
            wall=WALL_KINDS[variant % len(WALL_KINDS)],
        )
    return CameraLook(
        index=index,
        gains=tuple(float(g) for g in gains),  # type: ignore[arg-type]
        brightness=float(rng.uniform(*style.camera_brightness)),
        saturation=float(rng.uniform(*style.camera_saturation)),
        contrast=float(rng.uniform(*style.camera_contrast)),
        blur=float(rng.uniform(*style.camera_blur)),
        resolution=float(rng.uniform(*style.camera_resolution)),
        viewpoint_weights=tuple(float(w) for w in viewpoint_weights),  # type: ignore[arg-type]
        scene=scene,
    )


# ---- backgrounds ----------------------------------------------------------------------------


def _vary(rng: np.random.Generator, colour: RGB | tuple[float, ...], amount: float) -> RGB:
    varied = np.clip(np.asarray(colour) + rng.uniform(-amount, amount, 3), 0, 255)
    return (int(varied[0]), int(varied[1]), int(varied[2]))


def studio_background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A clean backdrop: a plain or vertically graded soft colour, sometimes with a floor."""
    top = np.asarray(_vary(rng, STUDIO_COLOURS[int(rng.integers(len(STUDIO_COLOURS)))], 10), np.float32)
    bottom = top * rng.uniform(0.8, 1.0) if rng.random() < 0.6 else top
    ramp = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    column = top[None, :] * (1.0 - ramp) + bottom[None, :] * ramp
    if rng.random() < 0.5:  # a floor: a slightly darker band below a soft horizon
        horizon = int(height * rng.uniform(0.6, 0.8))
        column[horizon:] *= rng.uniform(0.78, 0.9)
    image = np.broadcast_to(column[:, None, :], (height, width, 3))
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "RGB")


def _paint_wall(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, width: int, horizon: int, kind: str
) -> None:
    if kind == "brick":
        base = ((150, 72, 56), (172, 112, 82), (122, 62, 52), (182, 152, 122))[int(rng.integers(4))]
        draw.rectangle((0, 0, width, horizon), fill=_vary(rng, base, 10))
        brick_h, brick_w = int(rng.integers(8, 13)), int(rng.integers(20, 32))
        for row, y in enumerate(range(0, horizon, brick_h)):
            for x in range(-(row % 2) * brick_w // 2, width, brick_w):
                draw.rectangle((x + 1, y + 1, x + brick_w - 2, y + brick_h - 2), fill=_vary(rng, base, 22))
    elif kind == "windows":
        base = ((176, 170, 160), (140, 146, 150), (200, 192, 176))[int(rng.integers(3))]
        draw.rectangle((0, 0, width, horizon), fill=_vary(rng, base, 10))
        step_x, step_y = int(rng.integers(34, 50)), int(rng.integers(40, 56))
        for y in range(6, horizon - 10, step_y):
            for x in range(6, width, step_x):
                glass = _vary(rng, (62, 80, 98), 18)
                draw.rectangle((x, y, x + step_x - 12, y + step_y - 14), fill=(226, 226, 220))
                draw.rectangle((x + 3, y + 3, x + step_x - 15, y + step_y - 17), fill=glass)
                draw.line(
                    (x + 4, y + step_y - 18, x + step_x - 16, y + 5),
                    fill=_vary(rng, (120, 140, 160), 15),
                    width=2,
                )
    elif kind == "shopfront":
        draw.rectangle((0, 0, width, horizon), fill=_vary(rng, (70, 66, 62), 15))
        sign_h = int(horizon * 0.18)
        x = 0
        while x < width:  # shop after shop: a sign band over a window full of goods
            shop_w = int(rng.integers(70, 140))
            draw.rectangle((x, 0, x + shop_w, sign_h), fill=_vary(rng, (120, 120, 120), 110))
            draw.rectangle(
                (x + 6, sign_h + 6, x + shop_w - 6, horizon - 4), fill=_vary(rng, (96, 110, 118), 20)
            )
            for _ in range(int(rng.integers(10, 22))):
                gx, gy = (
                    x + rng.integers(8, max(9, shop_w - 14)),
                    rng.integers(sign_h + 8, max(sign_h + 9, horizon - 12)),
                )
                draw.rectangle(
                    (gx, gy, gx + rng.integers(4, 12), gy + rng.integers(4, 14)),
                    fill=_vary(rng, (128, 128, 128), 120),
                )
            x += shop_w
    elif kind == "trees":
        draw.rectangle((0, 0, width, horizon), fill=_vary(rng, (188, 196, 204), 15))
        for _ in range(int(width * horizon / 180)):
            cx, cy, r = rng.integers(0, width), rng.integers(0, max(1, horizon)), rng.integers(6, 20)
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=_vary(rng, (66, 108, 56), 30))
        for x in rng.integers(0, width, size=int(rng.integers(2, 6))):
            draw.rectangle(
                (x, horizon * 0.4, x + rng.integers(5, 10), horizon), fill=_vary(rng, (80, 60, 44), 12)
            )
    else:  # corrugated metal panels with posters
        base = _vary(rng, ((118, 134, 146), (150, 150, 140), (110, 120, 100))[int(rng.integers(3))], 10)
        draw.rectangle((0, 0, width, horizon), fill=base)
        for x in range(0, width, 6):
            draw.line((x, 0, x, horizon), fill=_vary(rng, np.asarray(base) * 0.8, 6), width=2)
        for _ in range(int(rng.integers(3, 7))):
            px, py = rng.integers(0, width), rng.integers(0, max(1, horizon // 2))
            draw.rectangle(
                (px, py, px + rng.integers(20, 40), py + rng.integers(28, 50)),
                fill=_vary(rng, (128, 128, 128), 120),
            )


def _paint_ground(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, width: int, height: int, horizon: int
) -> None:
    kind = GROUND_KINDS[int(rng.integers(len(GROUND_KINDS)))]
    if kind == "tiles":
        base = _vary(rng, (156, 152, 144), 20)
        draw.rectangle((0, horizon, width, height), fill=base)
        tile = int(rng.integers(14, 24))
        for y in range(horizon, height, tile):
            for x in range(0, width, tile):
                draw.rectangle((x + 1, y + 1, x + tile - 1, y + tile - 1), fill=_vary(rng, base, 14))
    elif kind == "asphalt":
        draw.rectangle((0, horizon, width, height), fill=_vary(rng, (84, 84, 88), 10))
        y = int(horizon + (height - horizon) * rng.uniform(0.4, 0.8))
        for x in range(0, width, 40):
            draw.rectangle((x, y, x + 22, y + 4), fill=_vary(rng, (220, 210, 160), 20))
    else:  # red brick paving in a herringbone-ish grid
        base = _vary(rng, (148, 92, 76), 15)
        draw.rectangle((0, horizon, width, height), fill=base)
        for row, y in enumerate(range(horizon, height, 7)):
            for x in range((row % 2) * 7, width, 14):
                draw.rectangle((x, y, x + 12, y + 5), fill=_vary(rng, base, 18))


def _paint_props(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, width: int, height: int, horizon: int
) -> None:
    for _ in range(int(rng.integers(4, 9))):
        x = int(rng.integers(0, width))
        kind = int(rng.integers(4))
        if kind == 0:  # lamp post / sign pole
            draw.rectangle(
                (x, int(height * 0.05), x + int(rng.integers(3, 7)), horizon + 10),
                fill=_vary(rng, (70, 74, 78), 20),
            )
        elif kind == 1:  # bin or planter
            w, h = int(rng.integers(16, 30)), int(rng.integers(18, 34))
            draw.rectangle((x, horizon + 6 - h, x + w, horizon + 6), fill=_vary(rng, (90, 100, 90), 60))
        elif kind == 2:  # parked bicycle
            r, y = int(rng.integers(8, 13)), horizon + int(rng.integers(0, 10))
            colour = _vary(rng, (60, 60, 60), 50)
            for wheel_x in (x, x + 3 * r):
                draw.ellipse((wheel_x - r, y - r, wheel_x + r, y + r), outline=colour, width=2)
            draw.line((x, y, x + int(1.5 * r), y - r, x + 3 * r, y, x + r, y - r), fill=colour, width=2)
        else:  # a distant passer-by
            h = int(rng.integers(int(height * 0.2), int(height * 0.35)))
            top = horizon + 4 - h
            body = _vary(rng, (100, 100, 100), 90)
            draw.ellipse((x, top, x + h // 6, top + h // 6), fill=_vary(rng, (180, 140, 110), 40))
            draw.rectangle((x - h // 14, top + h // 6, x + h // 6 + h // 14, top + int(h * 0.6)), fill=body)
            draw.rectangle((x, top + int(h * 0.6), x + h // 6, top + h), fill=_vary(rng, (50, 50, 60), 30))


def paint_street_scene(
    rng: np.random.Generator, width: int, height: int, wall: str = "windows"
) -> Image.Image:
    """A textured street scene (facade `wall` in WALL_KINDS, pavement, props, grain) crops are taken from."""
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    horizon = int(height * rng.uniform(0.45, 0.7))
    _paint_wall(draw, rng, width, horizon, wall)
    _paint_ground(draw, rng, width, height, horizon)
    _paint_props(draw, rng, width, height, horizon)
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(0.6)), dtype=np.float32)
    pixels = pixels.mean(axis=(0, 1)) + SCENE_CONTRAST * (pixels - pixels.mean(axis=(0, 1)))
    grain = rng.normal(0.0, 6.0, size=pixels.shape[:2])[..., None]
    return Image.fromarray(np.clip(pixels + grain, 0, 255).astype(np.uint8), "RGB")


def crop_scene(scene: Image.Image, offset: tuple[float, float], width: int, height: int) -> Image.Image:
    """The `width x height` window of `scene` at `offset` (fractions of the free range)."""
    left = round(offset[0] * (scene.width - width))
    top = round(offset[1] * (scene.height - height))
    return scene.crop((left, top, left + width, top + height))


# ---- the camera's optics and sensor ---------------------------------------------------------


def apply_camera_look(
    image: Image.Image, camera: CameraLook, view: View, noise_std: float, rng: np.random.Generator
) -> Image.Image:
    """Apply the camera's optics (low resolution, blur) then its sensor (cast, light, noise)."""
    width, height = image.size
    if camera.resolution < 0.999:
        small = (max(8, round(width * camera.resolution)), max(8, round(height * camera.resolution)))
        image = image.resize(small, Image.Resampling.BILINEAR).resize(
            (width, height), Image.Resampling.BILINEAR
        )
    if camera.blur > 0.01:
        image = image.filter(ImageFilter.GaussianBlur(camera.blur))
    pixels = np.asarray(image, dtype=np.float32)
    pixels = pixels * (np.asarray(camera.gains, np.float32) * (camera.brightness * view.brightness))
    if view.light_gradient != (0.0, 0.0):
        ys = np.linspace(-0.5, 0.5, height, dtype=np.float32)[:, None, None]
        xs = np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :, None]
        pixels = pixels * (1.0 + view.light_gradient[0] * xs + view.light_gradient[1] * ys)
    if camera.saturation != 1.0:
        grey = pixels.mean(axis=2, keepdims=True)
        pixels = grey + camera.saturation * (pixels - grey)
    if camera.contrast != 1.0:
        pixels = 128.0 + camera.contrast * (pixels - 128.0)
    if noise_std > 0:
        pixels = pixels + rng.normal(0.0, noise_std, size=pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")
