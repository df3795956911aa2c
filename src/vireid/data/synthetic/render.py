"""Rendering one synthetic person in visible, thermal or near-infrared light.

Rendering has two stages so that aligned multi-modal images (RegDB, RGBNT201, RGBT-PEDES pairs) share
one geometry:

1. **Geometry.** The person (from its :class:`~vireid.data.synthetic.attributes.Identity`) and the camera's
   background are drawn with PIL ``ImageDraw`` into one *label map* at ``oversample`` times the output
   size: each pixel holds a person part (skin, hair, upper garment, its pattern colour, lower garment,
   shoes, hat, bag, backpack, glasses, logo) or a background material. Pose and viewpoint (front, back,
   side), stride and arm swing, scale, crop offset, background clutter and occluders come from
   :class:`ImageConditions`, sampled per image.
2. **Appearance.** A look-up table turns labels into what a sensor measures, then the image is
   box-downsampled (anti-aliasing the label edges) and given the sensor's character:

   * ``visible``: colours of garments, skin and scene, shading, per-camera illumination level and colour
     cast, sensor noise, slight blur;
   * ``thermal``: temperatures. Skin is warmest; clothing lies between skin and ambient according to its
     thickness (a coat is colder than a T-shirt), hair, shoes, bags and backpacks are close to ambient,
     pattern colours differ by a small emissivity step (stripes partly visible), the background sits at the
     camera's ambient temperature. Then blur (thermal optics are soft), automatic gain control from image
     percentiles, noise and fixed-pattern column noise. Colours play no part;
   * ``nir``: reflectance under an infrared illuminator (SYSU-MM01 / LLCM style): grey levels from
     near-infrared reflectances (half visible luminance, half independent of it; hue never enters), a
     radial illumination fall-off, blur and noise.

   Infrared images are returned as three equal channels, as the real datasets store them.

Image sizes are ``(H, W)``; arrays are ``H x W x 3`` ``uint8``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter

from vireid.data.records import Modality
from vireid.data.synthetic.attributes import COLOURS, HAIR_COLOURS, SKIN_TONES, Identity
from vireid.data.synthetic.scene import (
    MATERIAL_BASE,
    MATERIALS,
    CameraProfile,
    draw_background,
    draw_occluder,
    scene_palette,
)

# Person part labels of the label map (background materials start at MATERIAL_BASE).
SKIN, HAIR, UPPER, UPPER_ALT, LOWER, LOWER_ALT, SHOES, HAT, BAG, BACKPACK, GLASSES, LOGO = range(1, 13)
PART_NAMES = {
    SKIN: "skin",
    HAIR: "hair",
    UPPER: "upper",
    UPPER_ALT: "upper_alt",
    LOWER: "lower",
    LOWER_ALT: "lower_alt",
    SHOES: "shoes",
    HAT: "hat",
    BAG: "bag",
    BACKPACK: "backpack",
    GLASSES: "glasses",
    LOGO: "logo",
}
_PERSON_LIMIT = 32

LOOKS = ("visible", "thermal", "nir")
VIEWS = ("front", "back", "side")

#: Smallest image a person can be drawn in legibly (H, W), and the accepted aspect ratios H / W.
MIN_SIZE = (32, 16)
MAX_SIZE = 1024
ASPECT_RANGE = (1.0, 4.0)


# ------------------------------------------------------------------------------------ per-image conditions


@dataclass(frozen=True)
class ImageConditions:
    """Everything that varies from one image of a person to the next (shared by aligned modalities).

    Geometry is relative to the image: ``scale`` = person height / image height, ``top`` = head top / image
    height, ``center`` = body axis / image width.
    """

    view: str  # front | back | side
    facing: int  # side view: +1 walks to the right, -1 to the left
    stride: float  # -1..1, leg spread while walking
    swing: float  # -1..1, arm swing
    scale: float
    top: float
    center: float
    light_dir: float  # -1..1, shading asymmetry
    light: float  # multiplier of the camera's visible light level
    cast: tuple[float, float, float]  # multiplier of the camera's colour cast
    clutter: float  # 0..1, background object density
    occluded: bool
    blur: float  # blur strength (pixels of the output image, scaled per look)
    noise: float  # multiplier of the sensor noise
    ambient_shift: float  # thermal: ambient temperature offset of this frame
    night: bool  # visible image taken in darkness (RGBT-PEDES / LLCM style low light)


def sample_conditions(
    rng: np.random.Generator, camera: CameraProfile, difficulty: float = 0.5, *, night_rate: float = 0.0
) -> ImageConditions:
    """Draw the per-image conditions at ``camera``; ``difficulty`` (0..1) widens every range.

    At the default difficulty 0.5 the person fills 78-96% of the image height, is off-centre by a few
    percent of the width and is seen from the front, back or side according to the camera's habits; at 1
    crops are looser and shifted, light varies strongly, and about one image in four is partly occluded.
    """
    d = float(difficulty)
    vw = np.asarray(camera.view_weights, dtype=np.float64)
    view = VIEWS[int(rng.choice(3, p=vw / vw.sum()))]
    facing = 1 if rng.random() < 0.5 else -1
    stride = float(rng.uniform(0.2, 1.0) * rng.choice([-1.0, 1.0]))
    swing = float(np.clip(-stride * 0.8 + rng.normal(0, 0.2), -1, 1))
    scale = float(rng.uniform(0.9 - 0.14 * d, 0.97 - 0.02 * d))
    slack = 1.0 - scale
    top = float(slack * rng.uniform(0.15, 0.85) + rng.normal(0, 0.02 * d))
    center = float(0.5 + np.clip(rng.normal(0, 0.02 + 0.06 * d), -0.18, 0.18))
    light_dir = float(rng.uniform(-1, 1))
    light = float(np.exp(rng.normal(0, 0.06 + 0.18 * d)))
    cast = tuple(float(v) for v in np.exp(rng.normal(0, 0.015 + 0.04 * d, 3)))
    clutter = float(np.clip(rng.uniform(0.0, 0.4) + 0.5 * d, 0, 1))
    occluded = bool(rng.random() < 0.25 * d * d)
    blur = float(rng.uniform(0.0, 0.3 + 0.6 * d))
    noise = float(rng.uniform(0.7, 1.0 + 0.8 * d))
    ambient_shift = float(rng.normal(0, 0.02 + 0.04 * d))
    night = bool(rng.random() < night_rate)
    return ImageConditions(
        view=view,
        facing=facing,
        stride=stride,
        swing=swing,
        scale=scale,
        top=top,
        center=center,
        light_dir=light_dir,
        light=light,
        cast=cast,  # type: ignore[arg-type]
        clutter=clutter,
        occluded=occluded,
        blur=blur,
        noise=noise,
        ambient_shift=ambient_shift,
        night=night,
    )


# ---------------------------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class _Body:
    """Body proportions in units of the person's height (y down from the top of the head)."""

    head_h: float
    head_w: float
    y_shoulder: float
    y_waist: float
    y_hip: float
    y_crotch: float
    y_ankle: float
    shoulder: float  # half widths
    waist: float
    hip: float
    leg_x: float  # distance of each leg axis from the body axis
    leg_top: float  # leg widths
    leg_bottom: float
    arm_top: float
    arm_bottom: float

    @staticmethod
    def of(idn: Identity) -> _Body:
        b = idn.build
        fem = idn.gender == "female"
        head_h = 0.132 - 0.014 * idn.height
        y_hip = 0.475 + 0.025 * (1.0 - idn.height)  # taller people have relatively longer legs
        hip = (0.098 if fem else 0.09) * b
        leg_top = 0.054 * b
        return _Body(
            head_h=head_h,
            head_w=head_h * 0.74,
            y_shoulder=head_h + 0.035,
            y_waist=y_hip - 0.1,
            y_hip=y_hip,
            y_crotch=y_hip + 0.045,
            y_ankle=0.955,
            shoulder=(0.106 if fem else 0.12) * b,
            waist=(0.078 if fem else 0.088) * b,
            hip=hip,
            leg_x=hip - leg_top * 0.55,
            leg_top=leg_top,
            leg_bottom=0.034 * b,
            arm_top=0.037 * b,
            arm_bottom=0.027 * b,
        )


class _Pen:
    """Draws primitives given in body units onto the label canvas."""

    def __init__(self, draw: ImageDraw.ImageDraw, cx: float, y0: float, ph: float, mirror: int = 1):
        self.draw = draw
        self.cx = cx
        self.y0 = y0
        self.ph = ph
        self.mirror = mirror  # -1 flips x (side views facing left)

    def pt(self, x: float, y: float) -> tuple[float, float]:
        return (self.cx + self.mirror * x * self.ph, self.y0 + y * self.ph)

    def poly(self, points: Sequence[tuple[float, float]], label: int) -> None:
        self.draw.polygon([self.pt(x, y) for x, y in points], fill=label)

    def ellipse(self, x: float, y: float, rx: float, ry: float, label: int) -> None:
        (ax, ay), (bx, by) = self.pt(x - rx, y - ry), self.pt(x + rx, y + ry)
        self.draw.ellipse((min(ax, bx), ay, max(ax, bx), by), fill=label)

    def rect(self, x0: float, y0: float, x1: float, y1: float, label: int) -> None:
        self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], label)

    def limb(self, x0: float, y0: float, x1: float, y1: float, w0: float, w1: float, label: int) -> None:
        """A tapered segment with round ends (arm, leg, sleeve, trouser leg)."""
        dx, dy = x1 - x0, y1 - y0
        norm = max((dx * dx + dy * dy) ** 0.5, 1e-6)
        nx, ny = -dy / norm, dx / norm
        self.poly(
            [
                (x0 + nx * w0 / 2, y0 + ny * w0 / 2),
                (x1 + nx * w1 / 2, y1 + ny * w1 / 2),
                (x1 - nx * w1 / 2, y1 - ny * w1 / 2),
                (x0 - nx * w0 / 2, y0 - ny * w0 / 2),
            ],
            label,
        )
        self.ellipse(x0, y0, w0 / 2, w0 / 2, label)
        self.ellipse(x1, y1, w1 / 2, w1 / 2, label)

    def chord(self, x: float, y: float, rx: float, ry: float, start: float, end: float, label: int) -> None:
        """Part of an ellipse cut by a straight line (PIL angles: 0 = right, clockwise, in the unmirrored frame)."""
        if self.mirror < 0:  # mirror the angles about the vertical axis
            start, end = 180.0 - end, 180.0 - start
        (ax, ay), (bx, by) = self.pt(x - rx, y - ry), self.pt(x + rx, y + ry)
        self.draw.chord((min(ax, bx), ay, max(ax, bx), by), start, end, fill=label)


def _lerp(a: tuple[float, float], b: tuple[float, float], t: float) -> tuple[float, float]:
    return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t)


_UPPER_HEM = {"tank": 0.0, "tshirt": 0.0, "longsleeve": 0.0, "jacket": 0.035, "coat": 0.25}
_SLEEVE = {"tank": 0.0, "tshirt": 0.4, "longsleeve": 0.9, "jacket": 0.92, "coat": 0.92}
_SLEEVE_BULK = {"tank": 1.0, "tshirt": 1.25, "longsleeve": 1.12, "jacket": 1.35, "coat": 1.4}


def _draw_legs_and_lower(
    pen: _Pen, idn: Identity, body: _Body, legs: Sequence[tuple[float, float, float, float]]
) -> None:
    """Legs (skin), lower garment and shoes. ``legs`` = (x_hip, y_hip, x_ankle, y_ankle) per leg."""
    for x0, y0, x1, y1 in legs:
        pen.limb(x0, y0, x1, y1, body.leg_top, body.leg_bottom, SKIN)
    lt = idn.lower_type
    if lt in ("trousers", "shorts"):
        reach = 0.97 if lt == "trousers" else 0.36
        for x0, y0, x1, y1 in legs:
            end = _lerp((x0, y0), (x1, y1), reach)
            w_end = body.leg_top + (body.leg_bottom - body.leg_top) * reach
            pen.limb(x0, y0 - 0.02, end[0], end[1], body.leg_top * 1.2, w_end * 1.3, LOWER)
        pen.rect(-body.hip, body.y_hip - 0.03, body.hip, body.y_crotch, LOWER)
    else:
        bottom = 0.71 if lt == "skirt" else 0.9
        flare = 1.55 if lt == "skirt" else 1.45
        pen.poly(
            [
                (-body.waist * 1.05, body.y_hip - 0.06),
                (body.waist * 1.05, body.y_hip - 0.06),
                (body.hip * flare, bottom),
                (-body.hip * flare, bottom),
            ],
            LOWER,
        )
    for _x0, _y0, x1, y1 in legs:
        if idn.shoes_type == "boots":
            pen.limb(x1, 0.8, x1, y1, body.leg_bottom * 1.35, body.leg_bottom * 1.45, SHOES)
        pen.ellipse(x1 + 0.006, y1 + 0.022, body.leg_bottom * 0.95, 0.026, SHOES)


def _draw_arm(pen: _Pen, idn: Identity, body: _Body, shoulder: tuple[float, float], hand: tuple[float, float]) -> None:
    pen.limb(*shoulder, *hand, body.arm_top, body.arm_bottom, SKIN)
    reach = _SLEEVE[idn.upper_type]
    bulk = _SLEEVE_BULK[idn.upper_type]
    if reach > 0:
        end = _lerp(shoulder, hand, reach)
        w_end = body.arm_top + (body.arm_bottom - body.arm_top) * reach
        pen.limb(*shoulder, *end, body.arm_top * bulk, w_end * bulk, UPPER)
    else:  # tank top: only a strap over the shoulder
        pen.ellipse(shoulder[0], shoulder[1] - 0.005, body.arm_top * 0.45, body.arm_top * 0.35, UPPER)


def _torso_points(idn: Identity, body: _Body) -> list[tuple[float, float]]:
    hem = body.y_hip + _UPPER_HEM[idn.upper_type]
    s = body.shoulder
    w = body.waist
    h = body.hip * (1.12 if idn.upper_type == "coat" else 1.0)
    top = s * (0.72 if idn.upper_type == "tank" else 1.0)
    y_s = body.y_shoulder
    return [
        (-top, y_s),
        (top, y_s),
        (s * 0.96, y_s + 0.05),
        (w, body.y_waist),
        (h, hem),
        (-h, hem),
        (-w, body.y_waist),
        (-s * 0.96, y_s + 0.05),
    ]


def _draw_frontal(pen: _Pen, idn: Identity, body: _Body, c: ImageConditions) -> dict[str, float]:
    """Front or back view. Returns a few positions used for the patterns and the logo."""
    back = c.view == "back"
    lift = 0.02 * abs(c.stride)
    lifted = 1 if c.stride > 0 else -1
    legs = [
        (side * body.leg_x, body.y_hip, side * (body.leg_x + 0.006), body.y_ankle - (lift if side == lifted else 0.0))
        for side in (-1, 1)
    ]
    _draw_legs_and_lower(pen, idn, body, legs)

    # Torso (upper garment), then long hair falling on the shoulders, neck and head.
    pen.poly(_torso_points(idn, body), UPPER)
    if idn.backpack and back:
        pen.rect(-body.shoulder * 0.74, body.y_shoulder + 0.025, body.shoulder * 0.74, body.y_shoulder + 0.27, BACKPACK)
    hw, hh = body.head_w, body.head_h
    if idn.hair_style == "long" and not back:
        for side in (-1, 1):
            pen.rect(side * hw * 0.3, hh * 0.3, side * hw * 0.66, body.y_shoulder + 0.07, HAIR)
    pen.rect(-hw * 0.22, hh * 0.8, hw * 0.22, body.y_shoulder + 0.01, SKIN)  # neck
    pen.ellipse(0, hh / 2, hw / 2, hh / 2, SKIN)

    # Hair and headwear.
    style = idn.hair_style
    if back:
        if style != "bald":
            pen.chord(0, hh / 2, hw / 2 * 1.06, hh / 2 * 1.04, 150, 390, HAIR)
        if style == "long":
            pen.rect(-hw * 0.68, hh * 0.35, hw * 0.68, body.y_shoulder + 0.13, HAIR)
        elif style == "ponytail":
            pen.limb(0, hh * 0.7, 0, body.y_shoulder + 0.1, 0.035, 0.022, HAIR)
        elif style == "bun":
            pen.ellipse(0, hh * 0.22, hw * 0.3, hh * 0.22, HAIR)
    elif style != "bald":
        pen.chord(0, hh * 0.47, hw / 2 * 1.08, hh / 2 * 1.02, 180, 360, HAIR)
        if style == "bun":
            pen.ellipse(0, -hh * 0.08, hw * 0.26, hh * 0.18, HAIR)
    if idn.hat == "cap":
        pen.chord(0, hh * 0.42, hw / 2 * 1.1, hh * 0.47, 180, 360, HAT)
        if not back:
            pen.ellipse(0, hh * 0.42, hw * 0.62, hh * 0.07, HAT)
    elif idn.hat == "beanie":
        pen.chord(0, hh * 0.5, hw / 2 * 1.12, hh * 0.62, 180, 360, HAT)
    if idn.glasses and not back:
        pen.rect(-hw * 0.42, hh * 0.42, hw * 0.42, hh * 0.56, GLASSES)

    # Arms hang beside the torso; the swing shortens one arm a little in a frontal view.
    for side in (-1, 1):
        shoulder = (side * (body.shoulder - body.arm_top * 0.45), body.y_shoulder + 0.015)
        raise_ = 0.03 * max(0.0, side * c.swing)
        hand = (side * (body.hip + body.arm_top * 0.75), body.y_hip + 0.03 - raise_)
        _draw_arm(pen, idn, body, shoulder, hand)

    # Bag: the person's left side is on the image's right in a front view and on its left from behind.
    if idn.bag != "none":
        s = idn.bag_side * (-1 if back else 1)
        if idn.bag == "shoulder":
            pen.limb(
                -s * body.shoulder * 0.55, body.y_shoulder + 0.005, s * body.hip, body.y_hip - 0.02, 0.014, 0.014, BAG
            )
            pen.rect(s * (body.hip - 0.005), body.y_hip - 0.035, s * (body.hip + 0.085), body.y_hip + 0.075, BAG)
        else:
            hx = s * (body.hip + body.arm_top * 0.75)
            pen.rect(hx - 0.035, body.y_hip + 0.035, hx + 0.035, body.y_hip + 0.125, BAG)
    if idn.backpack and not back:
        for side in (-1, 1):
            pen.limb(
                side * body.shoulder * 0.55,
                body.y_shoulder,
                side * body.shoulder * 0.5,
                body.y_shoulder + 0.2,
                0.03,
                0.028,
                BACKPACK,
            )
    if idn.upper_pattern == "logo" and not back:
        _draw_logo(pen, idn, 0.0, body.y_shoulder + 0.1, 0.062 * idn.build)
    return {"x_axis": 0.0}


def _draw_logo(pen: _Pen, idn: Identity, x: float, y: float, r: float) -> None:
    if idn.logo_shape == "circle":
        pen.ellipse(x, y, r, r, LOGO)
    elif idn.logo_shape == "square":
        pen.rect(x - r * 0.9, y - r * 0.9, x + r * 0.9, y + r * 0.9, LOGO)
    else:
        pen.poly([(x, y - r * 1.2), (x + r * 1.2, y), (x, y + r * 1.2), (x - r * 1.2, y)], LOGO)


def _draw_side(pen: _Pen, idn: Identity, body: _Body, c: ImageConditions) -> None:
    """Side view, walking towards +x (the pen mirrors it for people walking left)."""
    depth = 0.56
    hip_pivot = (0.0, body.y_hip)
    leg_len = body.y_ankle - body.y_hip
    angle = 0.32 * c.stride
    legs = []
    for a in (-abs(angle), abs(angle)):  # back leg first, front leg drawn over it
        legs.append((0.0, body.y_hip, hip_pivot[0] + leg_len * np.sin(a), body.y_hip + leg_len * np.cos(a)))
    # The far arm swings opposite to the near one and is mostly hidden behind the torso.
    shoulder = (0.0, body.y_shoulder + 0.02)
    arm_len = body.y_hip + 0.035 - shoulder[1]
    swing = 0.5 * c.swing
    far_hand = (shoulder[0] + arm_len * np.sin(-swing), shoulder[1] + arm_len * np.cos(swing))
    _draw_arm(pen, idn, body, shoulder, far_hand)
    if idn.backpack:
        pen.rect(
            -body.shoulder * depth - 0.075,
            body.y_shoulder + 0.025,
            -body.shoulder * depth + 0.02,
            body.y_shoulder + 0.26,
            BACKPACK,
        )
    _draw_legs_and_lower(pen, idn, body, legs)
    torso = [(x * depth, y) for x, y in _torso_points(idn, body)]
    torso = [(x + (0.012 if x > 0 else 0.0), y) for x, y in torso]  # chest slightly forward
    pen.poly(torso, UPPER)
    hw, hh = body.head_w, body.head_h
    style = idn.hair_style
    if style == "long":
        pen.rect(-hw * 0.62, hh * 0.3, hw * 0.05, body.y_shoulder + 0.12, HAIR)
    pen.rect(-hw * 0.2, hh * 0.8, hw * 0.2, body.y_shoulder + 0.01, SKIN)
    pen.ellipse(0.008, hh / 2, hw * 0.56, hh / 2, SKIN)
    if style != "bald":
        pen.chord(0.008, hh / 2, hw * 0.56 * 1.06, hh / 2 * 1.04, 110, 345, HAIR)
        if style == "ponytail":
            pen.limb(-hw * 0.5, hh * 0.45, -hw * 0.85, hh * 1.6, 0.032, 0.02, HAIR)
        elif style == "bun":
            pen.ellipse(-hw * 0.55, hh * 0.3, hw * 0.25, hh * 0.2, HAIR)
    if idn.hat == "cap":
        pen.chord(0.008, hh * 0.42, hw * 0.6, hh * 0.47, 180, 360, HAT)
        pen.rect(0.0, hh * 0.36, hw * 0.95, hh * 0.44, HAT)
    elif idn.hat == "beanie":
        pen.chord(0.008, hh * 0.5, hw * 0.62, hh * 0.62, 180, 360, HAT)
    if idn.glasses:
        pen.rect(hw * 0.2, hh * 0.42, hw * 0.56, hh * 0.54, GLASSES)
    near_hand = (shoulder[0] + arm_len * np.sin(swing), shoulder[1] + arm_len * np.cos(swing))
    _draw_arm(pen, idn, body, shoulder, near_hand)
    if idn.bag == "shoulder":
        pen.limb(-0.01, body.y_shoulder, 0.01, body.y_hip - 0.02, 0.014, 0.014, BAG)
        pen.rect(-0.045, body.y_hip - 0.035, 0.045, body.y_hip + 0.075, BAG)
    elif idn.bag == "hand":
        pen.rect(near_hand[0] - 0.035, near_hand[1] + 0.005, near_hand[0] + 0.035, near_hand[1] + 0.095, BAG)


@lru_cache(maxsize=16)
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return ys, xs


def _apply_patterns(labels: np.ndarray, idn: Identity, body: _Body, cx: float, y0: float, ph: float) -> None:
    """Turn parts of the upper/lower garment into the pattern colour (stripes, checks), in place."""
    for part, alt, pattern, period in (
        (UPPER, UPPER_ALT, idn.upper_pattern, idn.pattern_scale * (1.15 if idn.upper_pattern == "checks" else 1.0)),
        (LOWER, LOWER_ALT, idn.lower_pattern, 0.08),
    ):
        if pattern not in ("hstripes", "vstripes", "checks"):
            continue
        ys, xs = np.nonzero(labels == part)
        if ys.size == 0:
            continue
        # Stripes are anchored to the body (shoulder line, body axis), so they move with the person.
        y_ref = y0 + (body.y_shoulder if part == UPPER else 0.0) * ph
        hband = ((ys - y_ref) / (period * ph)) % 1.0 < 0.5
        vband = ((xs - cx) / (period * ph) + 0.25) % 1.0 < 0.5
        mask = {"hstripes": hband, "vstripes": vband, "checks": hband ^ vband}[pattern]
        labels[ys[mask], xs[mask]] = alt


@dataclass(frozen=True)
class _Geometry:
    labels: Image.Image  # (Hc, Wc) mode-L label map at oversampled resolution
    person: np.ndarray  # (H, W) float32: fraction of each output pixel covered by the person
    shade: np.ndarray  # (H, W) float32: shading of the person (cylinder-like, light from one side)
    oversample: int


def _oversample(size: tuple[int, int]) -> int:
    return 3 if size[0] < 64 else 2


def _draw_geometry(
    idn: Identity, camera: CameraProfile, c: ImageConditions, rng: np.random.Generator, size: tuple[int, int]
) -> _Geometry:
    s = _oversample(size)
    h, w = size[0] * s, size[1] * s
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    draw_background(draw, (w, h), camera, rng, c.clutter)
    ph = c.scale * h
    cx = c.center * w
    y0 = c.top * h
    body = _Body.of(idn)
    # The person is drawn straight over the background: background labels are >= MATERIAL_BASE, person
    # labels < _PERSON_LIMIT, so the two never mix up.
    if c.view == "side":
        _draw_side(_Pen(draw, cx, y0, ph, mirror=c.facing), idn, body, c)
    else:
        _draw_frontal(_Pen(draw, cx, y0, ph), idn, body, c)
    if idn.upper_pattern in ("hstripes", "vstripes", "checks") or idn.lower_pattern == "checks":
        labels = np.array(canvas)
        _apply_patterns(labels, idn, body, cx, y0, ph)
        canvas = Image.fromarray(labels, mode="L")
        draw = ImageDraw.Draw(canvas)
    if c.occluded:
        draw_occluder(draw, (w, h), camera, rng)
    person = _downsample((np.asarray(canvas) < _PERSON_LIMIT).astype(np.float32), s)
    _, xs = _grid(size[0], size[1])
    half = body.shoulder * c.scale * size[0] * (0.62 if c.view == "side" else 1.0) * 1.25
    u = np.clip((xs + 0.5 - c.center * size[1]) / half, -1.3, 1.3)
    shade = (1.0 - 0.3 * u * u + 0.1 * c.light_dir * u).astype(np.float32)
    return _Geometry(labels=canvas, person=person, shade=shade, oversample=s)


def _downsample(arr: np.ndarray, s: int) -> np.ndarray:
    """Box-filter ``arr`` (Hc, Wc[, C]) by an integer factor: anti-aliases the hard label edges."""
    # Summing strided views is several times faster than reshape(...).mean() for these small images.
    out = arr[0::s, 0::s].astype(np.float32, copy=True)
    for i in range(s):
        for j in range(s):
            if i or j:
                out += arr[i::s, j::s]
    return out * np.float32(1.0 / (s * s))


def _map_labels(geo: _Geometry, lut: np.ndarray) -> np.ndarray:
    """Look up ``lut`` (256,) or (256, 3) in 0..1 for every label and box-downsample: (H, W[, 3]) float32.

    The colour case goes through a PIL palette image (C code) at 8-bit precision; single-channel
    measurements (temperature, reflectance) keep float precision because automatic gain control stretches
    them afterwards.
    """
    s = geo.oversample
    if lut.ndim == 2:
        img = geo.labels.copy()
        img.putpalette(np.clip(np.rint(lut * 255), 0, 255).astype(np.uint8).tobytes(), rawmode="RGB")
        small = img.convert("RGB").reduce(s)
        return np.asarray(small, dtype=np.float32) * np.float32(1 / 255)
    return _downsample(lut.astype(np.float32)[np.asarray(geo.labels)], s)


# -------------------------------------------------------------------------------------------- appearance


def _visible_lut(idn: Identity, camera: CameraProfile, rng: np.random.Generator) -> np.ndarray:
    lut = np.zeros((256, 3), dtype=np.float32)

    def col(rgb: tuple[int, int, int]) -> np.ndarray:
        return np.asarray(rgb, dtype=np.float32) / 255.0

    lut[SKIN] = col(SKIN_TONES[idn.skin])
    lut[HAIR] = col(HAIR_COLOURS[idn.hair_colour])
    lut[UPPER] = col(COLOURS[idn.upper_colour])
    lut[UPPER_ALT] = col(COLOURS[idn.upper_pattern_colour])
    lut[LOGO] = col(COLOURS[idn.upper_pattern_colour])
    lut[LOWER] = col(COLOURS[idn.lower_colour])
    lut[LOWER_ALT] = col(COLOURS[idn.lower_pattern_colour])
    lut[SHOES] = col(COLOURS[idn.shoes_colour])
    lut[HAT] = col(COLOURS[idn.hat_colour])
    lut[BAG] = col(COLOURS[idn.bag_colour])
    lut[BACKPACK] = col(COLOURS[idn.backpack_colour])
    lut[GLASSES] = (0.08, 0.08, 0.09)
    # Fabric under different light: a small per-image, per-part brightness change.
    lut[1:_PERSON_LIMIT] *= rng.uniform(0.92, 1.08, size=(_PERSON_LIMIT - 1, 1)).astype(np.float32)
    palette = scene_palette(camera.scene, camera.scene_seed)
    lut[MATERIAL_BASE : MATERIAL_BASE + len(MATERIALS)] = palette.rgb
    return np.clip(lut, 0, 1)


def _thermal_lut(idn: Identity, camera: CameraProfile, ambient: float) -> np.ndarray:
    lut = np.zeros(256, dtype=np.float32)
    skin = 0.86 + idn.body_heat

    def through(insulation: float) -> float:
        # Temperature of a layer over the body: skin heat attenuated towards ambient by the insulation.
        return ambient + (skin - ambient) * (1.0 - insulation)

    upper = through(idn.upper_thickness)
    lower = through(idn.lower_thickness)
    lut[SKIN] = skin
    lut[HAIR] = through(0.5 if idn.hair_style == "long" else 0.38)
    lut[UPPER] = upper
    lut[UPPER_ALT] = upper + idn.pattern_emissivity
    lut[LOGO] = upper - 0.5 * idn.pattern_emissivity
    lut[LOWER] = lower
    lut[LOWER_ALT] = lower + 0.6 * idn.pattern_emissivity
    lut[SHOES] = through(0.78)
    lut[HAT] = through(0.66)
    lut[BAG] = through(0.9)
    lut[BACKPACK] = through(0.86)
    lut[GLASSES] = through(0.85)  # glass is opaque to thermal infrared: cold eyes
    palette = scene_palette(camera.scene, camera.scene_seed)
    lut[MATERIAL_BASE : MATERIAL_BASE + len(MATERIALS)] = ambient + palette.heat
    return lut


def _nir_lut(idn: Identity, camera: CameraProfile, near_gain: float) -> np.ndarray:
    lut = np.zeros(256, dtype=np.float32)
    for label, name in PART_NAMES.items():
        lut[label] = 0.12 if name == "glasses" else idn.nir[name]
    # The illuminator sits on the camera: the person, nearer than the background, is lit more strongly.
    lut[1:_PERSON_LIMIT] *= near_gain
    palette = scene_palette(camera.scene, camera.scene_seed)
    lut[MATERIAL_BASE : MATERIAL_BASE + len(MATERIALS)] = palette.nir * 0.6
    return lut


def _finish(img: np.ndarray, blur: float, noise: float, rng: np.random.Generator) -> np.ndarray:
    if blur > 0.05:
        sigma = (blur, blur, 0) if img.ndim == 3 else blur
        img = gaussian_filter(img, sigma=sigma, mode="nearest")
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(noise)
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def _to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)


def _shaded(geo: _Geometry, values: np.ndarray, strength: float, ref: float | np.ndarray = 0.0) -> np.ndarray:
    """Apply the person's shading to ``values`` where the person covers the pixel: ref + (v - ref) * shade."""
    factor = 1.0 + (geo.shade - 1.0) * strength * geo.person
    if values.ndim == 3:
        factor = factor[:, :, None]
    return ref + (values - ref) * factor


def _render_look(
    look: str,
    idn: Identity,
    camera: CameraProfile,
    c: ImageConditions,
    geo: _Geometry,
    rng: np.random.Generator,
    difficulty: float,
) -> np.ndarray:
    if look == "visible":
        img = _shaded(geo, _map_labels(geo, _visible_lut(idn, camera, rng)), 1.0)
        light = camera.light * c.light * (rng.uniform(0.25, 0.45) if c.night else 1.0)
        img = img * np.float32(light) * np.asarray(camera.cast, np.float32) * np.asarray(c.cast, np.float32)
        noise = camera.noise * c.noise / max(light, 0.2) ** 0.5
        return _finish(img, 0.25 + 0.6 * c.blur, noise, rng)
    if look == "thermal":
        ambient = camera.ambient + c.ambient_shift
        temp = _map_labels(geo, _thermal_lut(idn, camera, ambient))
        # Surfaces seen at a grazing angle emit less: body edges look cooler than the body's centre.
        temp = _shaded(geo, temp, 0.6, ambient)
        temp = gaussian_filter(temp, sigma=0.6 + 0.7 * c.blur, mode="nearest")
        lo, hi = np.percentile(temp, [rng.uniform(0.5, 3.0), rng.uniform(98.5, 99.9)])
        img = (temp - lo) / max(hi - lo, 1e-3) * rng.uniform(0.8, 0.95) + rng.uniform(0.02, 0.1)
        palette = scene_palette(camera.scene, camera.scene_seed)
        cols = palette.column_noise[np.arange(img.shape[1]) % len(palette.column_noise)]
        img = img + (0.01 + 0.01 * difficulty) * cols[None, :]
        return _to_rgb(_finish(img.astype(np.float32), 0.0, (0.015 + 0.02 * difficulty) * c.noise, rng))
    if look == "nir":
        refl = _map_labels(geo, _nir_lut(idn, camera, rng.uniform(1.15, 1.45)))
        refl = _shaded(geo, refl, 0.8)
        h, w = refl.shape
        ys, xs = _grid(h, w)
        cy, cxx = h * rng.uniform(0.35, 0.6), w * rng.uniform(0.35, 0.65)
        r2 = ((ys - cy) / h) ** 2 + ((xs - cxx) / w) ** 2 * 0.5
        falloff = 1.0 - rng.uniform(0.4, 0.9) * np.clip(r2 * 2.2, 0, 1)
        img = refl * falloff * rng.uniform(0.8, 1.2) * (0.7 + 0.3 * camera.light)
        return _to_rgb(_finish(img.astype(np.float32), 0.4 + 0.5 * c.blur, (0.02 + 0.02 * difficulty) * c.noise, rng))
    raise ValueError(f"unknown look {look!r}; use one of {LOOKS}")


# ------------------------------------------------------------------------------------------- public API


def check_size(size: tuple[int, int]) -> tuple[int, int]:
    """Validate an image size ``(H, W)``; raises ``ValueError`` with the accepted range."""
    h, w = int(size[0]), int(size[1])
    if h < MIN_SIZE[0] or w < MIN_SIZE[1]:
        raise ValueError(f"size {h}x{w} is too small to draw a person; the minimum is {MIN_SIZE[0]}x{MIN_SIZE[1]}")
    if h > MAX_SIZE or w > MAX_SIZE:
        raise ValueError(f"size {h}x{w} is larger than {MAX_SIZE} pixels on a side")
    if not ASPECT_RANGE[0] <= h / w <= ASPECT_RANGE[1]:
        raise ValueError(
            f"size {h}x{w} has height/width {h / w:.2f}; person crops need {ASPECT_RANGE[0]:g}..{ASPECT_RANGE[1]:g} "
            "(e.g. 128x64, 256x128, 384x128)"
        )
    return h, w


def render_views(
    identity: Identity,
    camera: CameraProfile,
    looks: Sequence[str],
    rng: np.random.Generator,
    size: tuple[int, int] = (128, 64),
    *,
    difficulty: float = 0.5,
    night_rate: float = 0.0,
    conditions: ImageConditions | None = None,
) -> list[np.ndarray]:
    """Render one moment of ``identity`` at ``camera`` in several looks sharing one geometry (aligned images).

    Args:
        identity: the person.
        camera: viewpoint, scene and sensor character.
        looks: any of ``visible``, ``thermal``, ``nir``; the output list follows this order.
        rng: the image's random stream; the result depends only on its state, never on ``looks`` for the
            geometry (each look draws its sensor noise from its own sub-stream).
        size: output ``(H, W)``.
        difficulty: 0..1, see :func:`sample_conditions`.
        night_rate: probability that the visible image is taken in darkness.
        conditions: pose and light drawn beforehand with :func:`sample_conditions` (the layout writers do
            this when a file name or a caption needs the view); drawn from ``rng`` when ``None``.

    Returns:
        one ``H x W x 3`` ``uint8`` array per look; infrared looks have three equal channels.
    """
    size = check_size(size)
    c = conditions if conditions is not None else sample_conditions(rng, camera, difficulty, night_rate=night_rate)
    geo = _draw_geometry(identity, camera, c, rng, size)
    look_seeds = {look: int(rng.integers(0, 2**63 - 1)) for look in LOOKS}
    out = []
    for look in looks:
        if look not in LOOKS:
            raise ValueError(f"unknown look {look!r}; use one of {LOOKS}")
        sub = np.random.Generator(np.random.PCG64(look_seeds[look]))
        out.append(_render_look(look, identity, camera, c, geo, sub, difficulty))
    return out


def render_person(
    identity: Identity,
    camera: CameraProfile,
    modality: Modality | str,
    rng: np.random.Generator,
    size: tuple[int, int] = (128, 64),
    *,
    look: str | None = None,
    difficulty: float = 0.5,
) -> np.ndarray:
    """Render one image of ``identity`` in memory: ``H x W x 3`` ``uint8``.

    ``modality`` picks visible or infrared; an infrared image uses the camera's ``ir_look`` (``thermal`` or
    ``nir``) unless ``look`` overrides it. Used by the layout writers, and by tests and other code that need
    a person image without touching the disk.

    Example::

        from vireid.data.synthetic import CameraProfile, render_person, sample_identity
        import numpy as np
        person = sample_identity(seed=0, pid=1)
        img = render_person(person, CameraProfile("cam3", 3, ir_look="nir"), "infrared", np.random.default_rng(0))
    """
    if look is None:
        look = "visible" if Modality.parse(modality) is Modality.VISIBLE else camera.ir_look
    return render_views(identity, camera, [look], rng, size, difficulty=difficulty)[0]


# Pseudo-colour palette of RGBT-PEDES-style thermal images: black -> purple -> red -> orange -> yellow -> white.
# Luminance rises monotonically along it, so decoding with PIL ``convert('L')`` (vireid's ``thermal_gray3``)
# recovers a grey level that orders temperatures correctly.
_IRON_ANCHORS = np.array(
    [(0, 0, 0), (40, 0, 90), (140, 0, 150), (220, 50, 60), (250, 140, 0), (255, 220, 60), (255, 255, 230)],
    dtype=np.float32,
)


@lru_cache(maxsize=1)
def pseudo_colour_palette() -> np.ndarray:
    """The fixed ``(256, 3)`` ``uint8`` palette used for pseudo-coloured thermal images."""
    t = np.linspace(0, len(_IRON_ANCHORS) - 1, 256)
    lo = np.floor(t).astype(int).clip(0, len(_IRON_ANCHORS) - 2)
    frac = (t - lo)[:, None]
    pal = _IRON_ANCHORS[lo] * (1 - frac) + _IRON_ANCHORS[lo + 1] * frac
    return np.rint(pal).astype(np.uint8)


def pseudo_colour(gray3: np.ndarray) -> np.ndarray:
    """Map an infrared image with equal channels (``H x W x 3``) through :func:`pseudo_colour_palette`."""
    return pseudo_colour_palette()[gray3[:, :, 0]]
