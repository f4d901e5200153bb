"""Drawing one synthetic person crop: body, clothes and bag by viewpoint, occluders, camera look.

Everything is drawn with PIL at `SUPERSAMPLE` times the stored size and box-reduced, which gives
anti-aliased edges at the cost of a few milliseconds per image. Coordinates inside the drawing
functions are fractions of the person height `P`, measured from the top of the head, so a pose
reads like anatomy: shoulders at 0.175 P, hips at about 0.5 P, ankles at 0.955 P.

What is visible depends on the viewpoint, as in real footage: a logo and the face only from the
front, a backpack as a large block from the back, as a side block in profile and as two straps
from the front; a shoulder bag is hidden behind the body when its side faces away.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .appearance import RGB, Identity, Occluder, View, sample_occluder
from .cameras import CameraLook, apply_camera_look, crop_scene, studio_background
from .domains import DomainStyle

SUPERSAMPLE = 2
FAR_SIDE_SHADE = 0.78  # limbs on the far side of a profile are in the body's shadow
Point = tuple[float, float]


def _shade(colour: RGB, factor: float) -> RGB:
    return tuple(int(min(255, max(0, round(c * factor)))) for c in colour)  # type: ignore[return-value]


def _limb(draw: ImageDraw.ImageDraw, a: Point, b: Point, width_a: float, width_b: float, colour: RGB) -> None:
    """A tapered segment from `a` to `b` with round joints."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    length = math.hypot(dx, dy) or 1e-6
    nx, ny = -dy / length, dx / length
    ha, hb = width_a / 2, width_b / 2
    draw.polygon(
        [
            (a[0] + nx * ha, a[1] + ny * ha),
            (b[0] + nx * hb, b[1] + ny * hb),
            (b[0] - nx * hb, b[1] - ny * hb),
            (a[0] - nx * ha, a[1] - ny * ha),
        ],
        fill=colour,
    )
    draw.ellipse((a[0] - ha, a[1] - ha, a[0] + ha, a[1] + ha), fill=colour)
    draw.ellipse((b[0] - hb, b[1] - hb, b[0] + hb, b[1] + hb), fill=colour)


def _lerp(a: Point, b: Point, t: float) -> Point:
    return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t)


def _chain(
    draw: ImageDraw.ImageDraw,
    joints: tuple[Point, Point, Point],
    widths: tuple[float, float, float],
    base: RGB,
    cover: RGB,
    covered_to: float,
    cover_extra: float = 1.0,
) -> None:
    """A two-segment limb (hip-knee-ankle, shoulder-elbow-wrist) in `base` (skin), covered by a
    garment in `cover` from the root down to `covered_to` (0..1 along the limb, 0.5 = the joint)."""
    a, b, c = joints
    _limb(draw, a, b, widths[0], widths[1], base)
    _limb(draw, b, c, widths[1], widths[2], base)
    if covered_to <= 0:
        return
    upper_end = _lerp(a, b, min(1.0, covered_to * 2))
    _limb(draw, a, upper_end, widths[0] * cover_extra, widths[1] * cover_extra, cover)
    if covered_to > 0.5:
        lower_end = _lerp(b, c, min(1.0, (covered_to - 0.5) * 2))
        _limb(draw, b, lower_end, widths[1] * cover_extra, widths[2] * cover_extra, cover)


def _patch(
    corners: tuple[Point, Point, Point, Point], u0: float, u1: float, v0: float, v1: float
) -> list[Point]:
    """The quad [u0,u1]x[v0,v1] of a bilinear patch (corners TL, TR, BR, BL): patterns follow the body."""
    tl, tr, br, bl = corners

    def at(u: float, v: float) -> Point:
        top, bottom = _lerp(tl, tr, u), _lerp(bl, br, u)
        return _lerp(top, bottom, v)

    return [at(u0, v0), at(u1, v0), at(u1, v1), at(u0, v1)]


def _garment(
    draw: ImageDraw.ImageDraw,
    corners: tuple[Point, Point, Point, Point],
    identity: Identity,
    shade: float = 1.0,
) -> None:
    """Upper-body garment with its pattern (stripes and checks; the logo is drawn separately)."""
    main, accent = _shade(identity.upper_colour, shade), _shade(identity.upper_accent, shade)
    draw.polygon(corners, fill=main)
    bands = identity.pattern_bands
    if identity.upper_pattern == "stripes":
        for i in range(1, bands * 2, 2):
            draw.polygon(_patch(corners, 0, 1, i / (bands * 2), (i + 1) / (bands * 2)), fill=accent)
    elif identity.upper_pattern == "checks":
        columns = 4
        for row in range(bands):
            for column in range(columns):
                if (row + column) % 2:
                    draw.polygon(
                        _patch(
                            corners, column / columns, (column + 1) / columns, row / bands, (row + 1) / bands
                        ),
                        fill=accent,
                    )


def _logo(draw: ImageDraw.ImageDraw, identity: Identity, centre: Point, size: float) -> None:
    x, y, r = centre[0], centre[1], size / 2
    colour = identity.upper_accent
    if identity.logo_shape == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    elif identity.logo_shape == "square":
        draw.rectangle((x - r, y - r, x + r, y + r), fill=colour)
    elif identity.logo_shape == "triangle":
        draw.polygon([(x, y - r), (x + r, y + r), (x - r, y + r)], fill=colour)
    else:  # a horizontal print across the chest
        draw.rectangle((x - 1.8 * r, y - 0.5 * r, x + 1.8 * r, y + 0.5 * r), fill=colour)


@dataclass(frozen=True)
class _Frame:
    """Maps body fractions to canvas pixels for one person in one view."""

    cx: float
    top: float
    P: float

    def y(self, fraction: float) -> float:
        return self.top + fraction * self.P


def _shoe(draw: ImageDraw.ImageDraw, ankle: Point, f: _Frame, colour: RGB, facing: int) -> None:
    """A shoe at `ankle`; `facing` 0 = towards/away from the camera, ±1 = toes to the right/left."""
    x, y, P = ankle[0], ankle[1], f.P
    if facing == 0:
        draw.ellipse((x - 0.037 * P, y - 0.012 * P, x + 0.037 * P, y + 0.034 * P), fill=colour)
    else:
        heel, toe = x - facing * 0.03 * P, x + facing * 0.075 * P
        draw.polygon(
            [
                (heel, y - 0.012 * P),
                (x + facing * 0.02 * P, y - 0.012 * P),
                (toe, y + 0.018 * P),
                (toe, y + 0.034 * P),
                (heel, y + 0.034 * P),
            ],
            fill=colour,
        )


def _lower_cover(identity: Identity) -> float:
    """How far down the legs the lower garment reaches (0.5 = knees)."""
    return {"trousers": 1.0, "shorts": 0.38, "skirt": 0.0}[identity.lower_kind]


def _draw_frontal(draw: ImageDraw.ImageDraw, identity: Identity, view: View, f: _Frame) -> None:
    """Front or back view. `m` maps the person's left (+1) to image x: +1 from the front, -1 from the back."""
    front = view.viewpoint == "front"
    m = 1 if front else -1
    P, cx, w = f.P, f.cx, identity.build
    shoulder, waist = 0.118 * P * w, 0.094 * P * w
    hip_y, ankle_y = f.y(1.0 - identity.leg_length), f.y(0.955)
    knee_y = (hip_y + ankle_y) / 2
    skin, lower = identity.skin, identity.lower_colour
    hair_bottom = {"short": 0.0, "medium": 0.16, "long": 0.27}[identity.hair_length]

    if front and hair_bottom:  # long hair hangs behind the head and shoulders
        draw.rounded_rectangle(
            (cx - 0.062 * P, f.y(0.03), cx + 0.062 * P, f.y(hair_bottom)),
            radius=0.03 * P,
            fill=identity.hair_colour,
        )
    if identity.accessory == "backpack" and front:  # the pack peeks out behind the shoulders
        draw.rectangle(
            (cx - shoulder * 0.85, f.y(0.2), cx + shoulder * 0.85, f.y(0.42)),
            fill=_shade(identity.accessory_colour, 0.7),
        )

    # legs, shoes, then the lower garment's top (or skirt) over the hips
    for side in (1, -1):
        lift = 0.028 * P * view.stride * max(0.0, math.sin(view.walk_phase) * side)
        hip = (cx + m * side * 0.05 * P * w, hip_y)
        knee = (cx + m * side * 0.048 * P * w, knee_y - lift * 0.5)
        ankle = (cx + m * side * 0.044 * P * w, ankle_y - lift)
        _chain(
            draw,
            (hip, knee, ankle),
            (0.082 * P * w, 0.058 * P * w, 0.044 * P * w),
            skin,
            lower,
            _lower_cover(identity),
            1.12,
        )
        _shoe(draw, ankle, f, identity.shoe_colour, 0)
    if identity.lower_kind == "skirt":
        draw.polygon(
            [
                (cx - waist, hip_y - 0.04 * P),
                (cx + waist, hip_y - 0.04 * P),
                (cx + waist * 1.45, f.y(0.7)),
                (cx - waist * 1.45, f.y(0.7)),
            ],
            fill=lower,
        )
    else:
        draw.rectangle((cx - waist * 1.04, hip_y - 0.04 * P, cx + waist * 1.04, hip_y + 0.05 * P), fill=lower)

    # torso, patterns, front-only details
    torso = (
        (cx - shoulder, f.y(0.18)),
        (cx + shoulder, f.y(0.18)),
        (cx + waist, hip_y + 0.02 * P),
        (cx - waist, hip_y + 0.02 * P),
    )
    _garment(draw, torso, identity)
    for side in (1, -1):  # rounded shoulders, hidden under the sleeves' tops
        x = cx + side * (shoulder - 0.03 * P)
        draw.ellipse((x - 0.03 * P, f.y(0.172), x + 0.03 * P, f.y(0.232)), fill=identity.upper_colour)
    if front and identity.upper_pattern == "logo":
        _logo(draw, identity, (cx, f.y(0.3)), 0.06 * P * w)
    if front and identity.accessory == "backpack":
        for side in (1, -1):
            x = cx + side * shoulder * 0.5
            draw.line(
                (x, f.y(0.175), x + side * 0.01 * P, f.y(0.37)),
                fill=identity.accessory_colour,
                width=max(1, int(0.024 * P)),
            )

    # arms swing forwards/backwards: seen from the front this mostly shortens the forearm
    sleeve = 1.0 if identity.long_sleeves else 0.27
    for side in (1, -1):
        swing = view.stride * math.sin(view.walk_phase) * side
        root = (cx + side * (shoulder - 0.03 * P), f.y(0.205))
        elbow = (root[0] + side * 0.02 * P, f.y(0.345))
        wrist = (root[0] + side * 0.026 * P, f.y(0.485 - 0.03 * abs(swing)))
        _chain(
            draw, (root, elbow, wrist), (0.056 * P, 0.047 * P, 0.04 * P), skin, identity.upper_colour, sleeve
        )
        draw.ellipse(
            (wrist[0] - 0.026 * P, wrist[1] - 0.012 * P, wrist[0] + 0.026 * P, wrist[1] + 0.04 * P), fill=skin
        )

    # neck and head
    draw.rectangle((cx - 0.022 * P, f.y(0.1), cx + 0.022 * P, f.y(0.19)), fill=skin)
    head = (cx - 0.05 * P, f.y(0.0), cx + 0.05 * P, f.y(0.135))
    if front:
        draw.ellipse(head, fill=skin)
        draw.chord(
            (cx - 0.054 * P, f.y(-0.008), cx + 0.054 * P, f.y(0.12)), 180, 360, fill=identity.hair_colour
        )
        for side in (1, -1):
            ex, ey, r = cx + side * 0.018 * P, f.y(0.073), 0.0075 * P
            draw.ellipse((ex - r, ey - r, ex + r, ey + r), fill=(40, 30, 28))
    else:
        for side in (1, -1):  # ears
            ex = cx + side * 0.05 * P
            draw.ellipse((ex - 0.012 * P, f.y(0.055), ex + 0.012 * P, f.y(0.09)), fill=skin)
        draw.ellipse((cx - 0.052 * P, f.y(-0.006), cx + 0.052 * P, f.y(0.125)), fill=identity.hair_colour)
    if identity.hat_colour is not None:
        draw.chord(
            (cx - 0.056 * P, f.y(-0.015), cx + 0.056 * P, f.y(0.1)), 180, 360, fill=identity.hat_colour
        )
        if front:
            draw.rectangle(
                (cx - 0.058 * P, f.y(0.035), cx + 0.058 * P, f.y(0.045)),
                fill=_shade(identity.hat_colour, 0.7),
            )

    # things on the back are drawn over the torso
    if not front and identity.accessory == "backpack":
        draw.rounded_rectangle(
            (cx - 0.085 * P * w, f.y(0.19), cx + 0.085 * P * w, f.y(0.44)),
            radius=0.02 * P,
            fill=identity.accessory_colour,
        )
        draw.rectangle(
            (cx - 0.06 * P * w, f.y(0.34), cx + 0.06 * P * w, f.y(0.42)),
            fill=_shade(identity.accessory_colour, 0.8),
        )
    if not front and hair_bottom:
        draw.rounded_rectangle(
            (cx - 0.054 * P, f.y(0.05), cx + 0.054 * P, f.y(hair_bottom)),
            radius=0.025 * P,
            fill=identity.hair_colour,
        )

    # bags hang on the person's accessory side
    bag_x = cx + m * identity.accessory_side * (waist + 0.03 * P)
    if identity.accessory == "shoulder_bag":
        strap_from = (cx - m * identity.accessory_side * shoulder * 0.6, f.y(0.18))
        draw.line(
            (strap_from, (bag_x, f.y(0.44))),
            fill=_shade(identity.accessory_colour, 0.8),
            width=max(1, int(0.016 * P)),
        )
        draw.rectangle(
            (bag_x - 0.05 * P, f.y(0.43), bag_x + 0.05 * P, f.y(0.53)), fill=identity.accessory_colour
        )
    elif identity.accessory == "handbag":
        hand_x = cx + m * identity.accessory_side * (shoulder - 0.03 * P + 0.026 * P)
        draw.line(
            ((hand_x, f.y(0.5)), (hand_x, f.y(0.54))),
            fill=identity.accessory_colour,
            width=max(1, int(0.01 * P)),
        )
        draw.rectangle(
            (hand_x - 0.04 * P, f.y(0.53), hand_x + 0.04 * P, f.y(0.61)), fill=identity.accessory_colour
        )


def _draw_profile(draw: ImageDraw.ImageDraw, identity: Identity, view: View, f: _Frame) -> None:
    """Side view walking towards image-right (`s` = +1) or image-left (`s` = -1)."""
    s = 1 if view.viewpoint == "right" else -1
    near_side = -s  # walking right, the person's right side faces the camera
    P, cx, w = f.P, f.cx, identity.build
    depth = 0.074 * P * w
    skin, lower, upper = identity.skin, identity.lower_colour, identity.upper_colour
    hip_y, ankle_y = f.y(1.0 - identity.leg_length), f.y(0.955)
    segment = (ankle_y - hip_y) / 2
    swing = 0.42 * view.stride * math.sin(view.walk_phase)

    def leg(angle: float) -> tuple[Point, Point, Point]:
        shin_angle = angle * 1.7 if angle < 0 else angle * 0.6  # the trailing knee bends
        hip = (cx, hip_y)
        knee = (hip[0] + s * segment * math.sin(angle), hip[1] + segment * math.cos(angle))
        ankle = (knee[0] + s * segment * math.sin(shin_angle), knee[1] + segment * math.cos(shin_angle))
        return hip, knee, ankle

    drop = ankle_y - max(leg(swing)[2][1], leg(-swing)[2][1])  # keep the lower foot on the ground
    f = _Frame(f.cx, f.top + drop, f.P)
    hip_y += drop
    legs = {"near": leg(swing), "far": leg(-swing)}

    def arm(angle: float) -> tuple[Point, Point, Point]:
        root = (cx - s * 0.012 * P, f.y(0.205))
        elbow = (root[0] + s * 0.155 * P * math.sin(angle), root[1] + 0.155 * P * math.cos(angle))
        fore = angle + 0.3
        return root, elbow, (elbow[0] + s * 0.145 * P * math.sin(fore), elbow[1] + 0.145 * P * math.cos(fore))

    sleeve = 1.0 if identity.long_sleeves else 0.27
    arm_widths = (0.058 * P, 0.048 * P, 0.04 * P)
    leg_widths = (0.085 * P * w, 0.06 * P * w, 0.045 * P * w)

    def hand(wrist: Point, colour: RGB) -> None:
        draw.ellipse(
            (wrist[0] - 0.025 * P, wrist[1] - 0.01 * P, wrist[0] + 0.025 * P, wrist[1] + 0.04 * P),
            fill=colour,
        )

    # far side first: arm, leg, anything carried on the far side
    far_arm = arm(0.8 * swing)
    _chain(draw, far_arm, arm_widths, _shade(skin, FAR_SIDE_SHADE), _shade(upper, FAR_SIDE_SHADE), sleeve)
    hand(far_arm[2], _shade(skin, FAR_SIDE_SHADE))
    _chain(
        draw,
        legs["far"],
        leg_widths,
        _shade(skin, FAR_SIDE_SHADE),
        _shade(lower, FAR_SIDE_SHADE),
        _lower_cover(identity),
        1.12,
    )
    _shoe(draw, legs["far"][2], f, _shade(identity.shoe_colour, FAR_SIDE_SHADE), s)
    far_bag = identity.accessory_side != near_side
    if identity.accessory == "shoulder_bag" and far_bag:
        draw.rectangle(
            sorted_box(cx - s * 0.07 * P, f.y(0.43), cx + s * 0.01 * P, f.y(0.52)),
            fill=_shade(identity.accessory_colour, FAR_SIDE_SHADE),
        )
    if identity.accessory == "handbag" and far_bag:
        x, y = far_arm[2]
        draw.rectangle(
            sorted_box(x - 0.04 * P, y + 0.04 * P, x + 0.04 * P, y + 0.12 * P),
            fill=_shade(identity.accessory_colour, FAR_SIDE_SHADE),
        )
    if identity.hair_length == "long":
        draw.rounded_rectangle(
            sorted_box(cx - s * 0.058 * P, f.y(0.05), cx + s * 0.0 * P, f.y(0.26)),
            radius=0.02 * P,
            fill=_shade(identity.hair_colour, 0.9),
        )

    # near leg, hips, torso, backpack, near arm
    _chain(draw, legs["near"], leg_widths, skin, lower, _lower_cover(identity), 1.12)
    _shoe(draw, legs["near"][2], f, identity.shoe_colour, s)
    if identity.lower_kind == "skirt":
        draw.polygon(
            [
                (cx - depth * 0.95, hip_y - 0.04 * P),
                (cx + depth * 0.95, hip_y - 0.04 * P),
                (cx + depth * 1.5, f.y(0.7)),
                (cx - depth * 1.5, f.y(0.7)),
            ],
            fill=lower,
        )
    else:
        draw.rectangle(sorted_box(cx - depth, hip_y - 0.04 * P, cx + depth, hip_y + 0.06 * P), fill=lower)
    front_x, back_x = cx + s * depth, cx - s * depth * 0.95
    torso = (
        (back_x, f.y(0.18)),
        (front_x, f.y(0.18)),
        (cx + s * depth * 0.92, hip_y + 0.02 * P),
        (cx - s * depth * 0.9, hip_y + 0.02 * P),
    )
    draw.ellipse((cx - depth, f.y(0.165), cx + depth, f.y(0.26)), fill=upper)
    _garment(draw, torso, identity)
    if identity.accessory == "backpack":
        draw.rounded_rectangle(
            sorted_box(back_x - s * 0.07 * P, f.y(0.19), back_x + s * 0.012 * P, f.y(0.43)),
            radius=0.02 * P,
            fill=identity.accessory_colour,
        )
    if identity.accessory == "shoulder_bag" and not far_bag:
        draw.line(
            ((cx + s * 0.05 * P, f.y(0.18)), (cx - s * 0.02 * P, f.y(0.43))),
            fill=_shade(identity.accessory_colour, 0.8),
            width=max(1, int(0.016 * P)),
        )
        draw.rectangle(
            sorted_box(cx - s * 0.06 * P, f.y(0.43), cx + s * 0.035 * P, f.y(0.52)),
            fill=identity.accessory_colour,
        )
    near_arm = arm(-0.8 * swing)
    _chain(draw, near_arm, arm_widths, skin, upper, sleeve)
    hand(near_arm[2], skin)
    if identity.accessory == "handbag" and not far_bag:
        x, y = near_arm[2]
        draw.rectangle(
            sorted_box(x - 0.04 * P, y + 0.04 * P, x + 0.04 * P, y + 0.12 * P), fill=identity.accessory_colour
        )

    # neck and head in profile: hair covers the back of the head, the face looks towards `s`
    draw.rectangle(sorted_box(cx - 0.022 * P, f.y(0.1), cx + 0.022 * P, f.y(0.19)), fill=skin)
    head_x = cx + s * 0.012 * P
    draw.ellipse((head_x - 0.048 * P, f.y(0.0), head_x + 0.048 * P, f.y(0.135)), fill=skin)
    nose_x = head_x + s * 0.048 * P
    draw.polygon(
        [
            (nose_x - s * 0.004 * P, f.y(0.06)),
            (nose_x + s * 0.014 * P, f.y(0.085)),
            (nose_x - s * 0.004 * P, f.y(0.09)),
        ],
        fill=skin,
    )
    draw.pieslice(
        (head_x - 0.052 * P, f.y(-0.008), head_x + 0.052 * P, f.y(0.13)),
        *((180, 450) if s > 0 else (90, 360)),
        fill=identity.hair_colour,
    )
    ex, ey, r = head_x + s * 0.03 * P, f.y(0.072), 0.007 * P
    draw.ellipse((ex - r, ey - r, ex + r, ey + r), fill=(40, 30, 28))
    if identity.hat_colour is not None:
        draw.chord(
            (head_x - 0.054 * P, f.y(-0.015), head_x + 0.054 * P, f.y(0.1)),
            180,
            360,
            fill=identity.hat_colour,
        )
        draw.rectangle(
            sorted_box(head_x, f.y(0.035), head_x + s * 0.085 * P, f.y(0.047)),
            fill=_shade(identity.hat_colour, 0.7),
        )


def sorted_box(x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
    """PIL boxes need x0 <= x1 and y0 <= y1; mirrored profiles produce either order."""
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def draw_person(layer: Image.Image, identity: Identity, view: View) -> None:
    """Draw `identity` in `view` onto the transparent RGBA `layer` (any size), with a ground shadow."""
    draw = ImageDraw.Draw(layer)
    width, height = layer.size
    P = view.person_height * height
    foot = view.foot_y * height
    frame = _Frame(cx=view.center_x * width, top=foot - P, P=P)
    draw.ellipse(
        (frame.cx - 0.17 * P, foot - 0.025 * P, frame.cx + 0.17 * P, foot + 0.012 * P), fill=(0, 0, 0, 60)
    )
    if view.viewpoint in ("front", "back"):
        _draw_frontal(draw, identity, view, frame)
    else:
        _draw_profile(draw, identity, view, frame)


def draw_occluder(image: Image.Image, occluder: Occluder) -> None:
    """Draw something in front of the person: a pole, a car, a passer-by or a bush."""
    draw = ImageDraw.Draw(image)
    width, height = image.size
    x, colour = occluder.x * width, occluder.colour
    if occluder.kind == "pole":
        half = occluder.extent * width / 2
        draw.rectangle((x - half, 0, x + half, height), fill=colour)
        draw.rectangle((x - half * 0.5, 0, x - half * 0.1, height), fill=_shade(colour, 1.25))
    elif occluder.kind == "car":
        top = height * (1.0 - occluder.extent)
        draw.rounded_rectangle(
            (x - width * 0.7, top, x + width * 0.7, height + 10), radius=0.04 * height, fill=colour
        )
        draw.rectangle(
            (x - width * 0.55, top + 0.02 * height, x + width * 0.55, top + 0.07 * height),
            fill=_shade(colour, 0.55),
        )
        r = 0.07 * height
        for wheel_x in (x - width * 0.45, x + width * 0.45):
            draw.ellipse((wheel_x - r, height - r, wheel_x + r, height + r), fill=(20, 20, 22))
    elif occluder.kind == "passer_by":
        half = occluder.extent * width / 2
        draw.ellipse((x - half * 0.45, height * 0.02, x + half * 0.45, height * 0.16), fill=(70, 50, 40))
        draw.rounded_rectangle(
            (x - half, height * 0.15, x + half, height * 0.6), radius=half * 0.4, fill=colour
        )
        draw.rectangle((x - half * 0.7, height * 0.58, x + half * 0.7, height), fill=_shade(colour, 0.45))
    else:  # bush
        top = height * (1.0 - occluder.extent)
        for i in range(9):
            cx = x + (i - 4) * width * 0.08
            cy = top + (i % 3) * 0.05 * height
            r = 0.09 * height
            draw.ellipse((cx - r, cy, cx + r, height + r), fill=_shade(colour, 0.85 + 0.05 * (i % 4)))


def _background(
    camera: CameraLook, view: View, rng: np.random.Generator, size: tuple[int, int]
) -> Image.Image:
    if camera.scene is not None:
        return crop_scene(camera.scene, view.background_offset, *size).convert("RGBA")
    return studio_background(rng, *size).convert("RGBA")


def _finish(
    canvas: Image.Image, camera: CameraLook, view: View, style: DomainStyle, rng: np.random.Generator
) -> Image.Image:
    stored = canvas.convert("RGB").reduce(SUPERSAMPLE)
    return apply_camera_look(stored, camera, view, style.sensor_noise, rng)


def render_person(
    identity: Identity,
    view: View,
    *,
    camera: CameraLook,
    style: DomainStyle,
    rng: np.random.Generator,
    size: tuple[int, int],
) -> Image.Image:
    """One stored-size RGB crop (`size` = (width, height)) of `identity` seen by `camera` in `view`.

    `rng` supplies the remaining per-image randomness (studio backdrop colour, sensor noise).
    """
    render_size = (size[0] * SUPERSAMPLE, size[1] * SUPERSAMPLE)
    canvas = _background(camera, view, rng, render_size)
    layer = Image.new("RGBA", render_size, (0, 0, 0, 0))
    draw_person(layer, identity, view)
    if abs(view.rotation) > 0.05:
        pivot = (view.center_x * render_size[0], view.foot_y * render_size[1])
        layer = layer.rotate(view.rotation, resample=Image.Resampling.BILINEAR, center=pivot)
    canvas = Image.alpha_composite(canvas, layer)
    if view.occluder is not None:
        draw_occluder(canvas, view.occluder)
    return _finish(canvas, camera, view, style, rng)


def render_non_person(
    kind: str,
    view: View,
    *,
    camera: CameraLook,
    style: DomainStyle,
    rng: np.random.Generator,
    size: tuple[int, int],
    stranger: Identity | None = None,
) -> Image.Image:
    """A false detection for the gallery: `kind` "distractor" (person id 0000: background, objects,
    at most a fragment of a stranger) or "junk" (id -1: a far-away or badly cut stranger)."""
    render_size = (size[0] * SUPERSAMPLE, size[1] * SUPERSAMPLE)
    canvas = _background(camera, view, rng, render_size)
    if stranger is not None:
        layer = Image.new("RGBA", render_size, (0, 0, 0, 0))
        draw_person(layer, stranger, view)
        canvas = Image.alpha_composite(canvas, layer)
    if view.occluder is not None:
        draw_occluder(canvas, view.occluder)
    if kind == "distractor" and stranger is None:  # a second object makes empty crops less uniform
        draw_occluder(canvas, sample_occluder(rng))
    return _finish(canvas, camera, view, style, rng)
