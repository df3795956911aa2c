"""Cameras and the scenes behind the person: background materials, light and sensor character per camera.

A :class:`CameraProfile` describes one physical viewpoint (SYSU-MM01 ``cam2``, a RegDB camera pair, an
RGBNT201 camera, ...): indoor or outdoor scene, how bright and what colour the visible light is, which
views of people it mostly sees, the background temperature for thermal sensors and whether its infrared
channel looks like a thermal (emitted heat) or a near-infrared (reflected, actively lit) camera. The same
profile renders every modality, so aligned RGB / NIR / thermal triplets share one scene.

Backgrounds are drawn from a small vocabulary of materials (wall, floor, window, tree, car, ...), each with
a visible colour, a temperature offset relative to the camera's ambient temperature and a near-infrared
reflectance. A camera's palette (wall colour, floor colour, which objects appear) is fixed by its
``scene_seed``; object placement changes from image to image, as in crops cut from different video
frames. SYSU-MM01's ``cam3`` is the same room as ``cam2``, so its profile shares ``cam2``'s scene seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import ImageDraw

from vireid.data.synthetic.seeding import stream

#: Background material labels start here in the label map; person part labels are below 32.
MATERIAL_BASE = 64


@dataclass(frozen=True)
class Material:
    """A background material: visible colour, thermal offset from ambient (0..1 scale), NIR reflectance."""

    name: str
    rgb: tuple[int, int, int]
    heat: float
    nir: float


MATERIALS: tuple[Material, ...] = (
    Material("wall", (196, 190, 176), 0.00, 0.50),
    Material("floor", (120, 112, 104), -0.02, 0.36),
    Material("door", (122, 86, 56), 0.01, 0.34),
    Material("window", (170, 198, 214), -0.08, 0.20),
    Material("furniture", (70, 62, 58), 0.00, 0.26),
    Material("poster", (150, 96, 84), 0.01, 0.55),
    Material("lamp", (250, 244, 210), 0.45, 0.95),
    Material("facade", (150, 130, 120), 0.02, 0.45),
    Material("sky", (176, 196, 222), -0.18, 0.30),
    Material("pavement", (138, 136, 132), 0.03, 0.40),
    Material("grass", (82, 128, 62), -0.04, 0.78),
    Material("tree", (52, 90, 44), -0.03, 0.72),
    Material("pole", (64, 66, 70), -0.02, 0.18),
    Material("car", (150, 40, 40), 0.12, 0.38),
    Material("bench", (110, 82, 58), -0.01, 0.30),
    Material("bush", (60, 104, 50), -0.03, 0.74),
)
MATERIAL_INDEX: dict[str, int] = {m.name: MATERIAL_BASE + i for i, m in enumerate(MATERIALS)}

_INDOOR_OBJECTS = {"door": 1.0, "window": 0.8, "furniture": 1.2, "poster": 0.7, "lamp": 0.35, "pole": 0.5}
_OUTDOOR_OBJECTS = {"tree": 1.2, "bush": 1.0, "pole": 1.0, "car": 0.6, "bench": 0.6, "window": 0.7, "lamp": 0.2}


@dataclass(frozen=True)
class CameraProfile:
    """One viewpoint of a dataset and the look of its images.

    Attributes:
        name: folder-style name (``cam1``, ``RGB``, ...), for messages and previews.
        camid: camera number as the layout writes it.
        scene: ``indoor`` or ``outdoor``.
        scene_seed: fixes the scene palette (wall/floor colours, object vocabulary); equal seeds = same place.
        light: visible illumination gain (1 = well lit, ~0.3 = low light as in LLCM).
        cast: per-channel multipliers of the visible light (colour temperature of the lamps or daylight).
        noise: visible sensor noise (standard deviation on the 0..1 scale) at ``light = 1``.
        ambient: background temperature on the 0..1 thermal scale (people are ~0.86).
        ir_look: ``thermal`` (emitted heat: skin bright, clothing insulates) or ``nir`` (reflected light of
            an infrared illuminator: grey levels follow near-infrared reflectance).
        view_weights: relative frequency of ``front``, ``back`` and ``side`` views at this camera.
    """

    name: str
    camid: int
    scene: str = "indoor"
    scene_seed: int = 0
    light: float = 1.0
    cast: tuple[float, float, float] = (1.0, 1.0, 1.0)
    noise: float = 0.012
    ambient: float = 0.35
    ir_look: str = "thermal"
    view_weights: tuple[float, float, float] = (1.0, 1.0, 0.5)


@dataclass(frozen=True)
class ScenePalette:
    """Persistent appearance of one camera's scene, derived from its ``scene_seed``."""

    top: int  # material label of the upper background (wall / facade / sky / tree line)
    bottom: int  # material label of the ground
    horizon: float  # mean height of the wall/ground boundary as a fraction of the image height
    objects: tuple[tuple[int, float], ...]  # (material label, weight) of clutter objects
    rgb: np.ndarray  # (len(MATERIALS), 3) visible colours in 0..1 for this camera
    heat: np.ndarray  # (len(MATERIALS),) temperature offsets
    nir: np.ndarray  # (len(MATERIALS),) near-infrared reflectances
    column_noise: np.ndarray  # (64,) fixed-pattern column offsets of the infrared sensor


@lru_cache(maxsize=256)
def scene_palette(scene: str, scene_seed: int) -> ScenePalette:
    """The palette of a camera: deterministic in ``(scene, scene_seed)``."""
    rng = stream(scene_seed, "scene-palette", scene)
    base_rgb = np.array([m.rgb for m in MATERIALS], dtype=np.float32) / 255.0
    # Each camera sees its own shade of every material (paint, pavement, foliage differ between places).
    rgb = np.clip(
        base_rgb * rng.uniform(0.8, 1.15, size=(len(MATERIALS), 1)) + rng.normal(0, 0.025, base_rgb.shape), 0, 1
    )
    # Scenes are less saturated than clothing (walls, floors, pavement), as in the real surveillance footage.
    rgb = 0.6 * rgb + 0.4 * rgb.mean(axis=1, keepdims=True)
    heat = np.array([m.heat for m in MATERIALS], dtype=np.float32) + rng.normal(0, 0.015, len(MATERIALS))
    nir = np.clip(np.array([m.nir for m in MATERIALS], dtype=np.float32) + rng.normal(0, 0.06, len(MATERIALS)), 0.05, 1)
    if scene == "indoor":
        top = MATERIAL_INDEX["wall"]
        bottom = MATERIAL_INDEX["floor"]
        horizon = float(rng.uniform(0.55, 0.72))
        vocabulary = _INDOOR_OBJECTS
    else:
        top = MATERIAL_INDEX[str(rng.choice(["facade", "tree", "sky", "facade"]))]
        bottom = MATERIAL_INDEX[str(rng.choice(["pavement", "pavement", "grass"]))]
        horizon = float(rng.uniform(0.45, 0.65))
        vocabulary = _OUTDOOR_OBJECTS
    objects = tuple((MATERIAL_INDEX[n], float(w * rng.uniform(0.3, 1.5))) for n, w in vocabulary.items())
    column_noise = rng.normal(0, 1, 64).astype(np.float32)
    return ScenePalette(
        top=top,
        bottom=bottom,
        horizon=horizon,
        objects=objects,
        rgb=rgb.astype(np.float32),
        heat=heat.astype(np.float32),
        nir=nir.astype(np.float32),
        column_noise=column_noise,
    )


def draw_background(
    draw: ImageDraw.ImageDraw, size: tuple[int, int], camera: CameraProfile, rng: np.random.Generator, clutter: float
) -> None:
    """Draw the background material labels of one image onto ``draw`` (a mode-``L`` canvas of ``size`` (W, H)).

    ``clutter`` (~0..1) scales how many objects appear. Objects are placed per image: crops of one camera are
    cut from different frames and positions, so the background varies while the palette stays.
    """
    w, h = size
    palette = scene_palette(camera.scene, camera.scene_seed)
    horizon = int(h * float(np.clip(palette.horizon + rng.normal(0, 0.06), 0.3, 0.85)))
    draw.rectangle((0, 0, w, horizon), fill=palette.top)
    draw.rectangle((0, horizon, w, h), fill=palette.bottom)
    labels = [m for m, _ in palette.objects]
    weights = np.array([wt for _, wt in palette.objects])
    count = int(rng.poisson(1.0 + 3.0 * clutter))
    for _ in range(count):
        mat = labels[int(rng.choice(len(labels), p=weights / weights.sum()))]
        name = MATERIALS[mat - MATERIAL_BASE].name
        cx = rng.uniform(-0.1, 1.1) * w
        if name in ("tree", "bush"):
            rx = rng.uniform(0.15, 0.45) * w
            ry = rng.uniform(0.1, 0.3) * h
            cy = horizon - ry * (0.2 if name == "bush" else rng.uniform(0.6, 1.6))
            draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=mat)
        elif name == "pole":
            pw = rng.uniform(0.03, 0.09) * w
            draw.rectangle((cx - pw, 0, cx + pw, horizon + rng.uniform(0.0, 0.25) * h), fill=mat)
        elif name == "lamp":
            r = rng.uniform(0.03, 0.08) * w
            cy = rng.uniform(0.02, 0.35) * h
            draw.ellipse((cx - r, cy - r * 0.6, cx + r, cy + r * 0.6), fill=mat)
        elif name in ("car", "bench", "furniture"):
            bw = rng.uniform(0.3, 0.9) * w
            bh = rng.uniform(0.08, 0.22) * h
            top = horizon - bh * rng.uniform(0.3, 0.9)
            draw.rectangle((cx - bw / 2, top, cx + bw / 2, top + bh), fill=mat)
        else:  # door, window, poster: wall-mounted rectangles above the horizon
            bw = rng.uniform(0.2, 0.6) * w
            bh = rng.uniform(0.2, 0.55) * h
            bottom = horizon - (0 if name == "door" else rng.uniform(0.05, 0.3) * h)
            draw.rectangle((cx - bw / 2, bottom - bh, cx + bw / 2, bottom), fill=mat)


def draw_occluder(
    draw: ImageDraw.ImageDraw, size: tuple[int, int], camera: CameraProfile, rng: np.random.Generator
) -> None:
    """Draw one foreground object (pole, bench, bush) over the person: partial occlusion at high difficulty."""
    w, h = size
    kind = str(rng.choice(["pole", "low", "side"]))
    if kind == "pole":
        cx = rng.uniform(0.1, 0.9) * w
        pw = rng.uniform(0.05, 0.12) * w
        draw.rectangle((cx - pw, 0, cx + pw, h), fill=MATERIAL_INDEX["pole"])
    elif kind == "low":
        mat = MATERIAL_INDEX["bush" if camera.scene == "outdoor" else "furniture"]
        top = rng.uniform(0.72, 0.88) * h
        draw.rectangle((0, top, w, h), fill=mat)
    else:
        mat = MATERIAL_INDEX["car" if camera.scene == "outdoor" else "door"]
        edge = rng.uniform(0.12, 0.3) * w
        if rng.random() < 0.5:
            draw.rectangle((0, 0, edge, h), fill=mat)
        else:
            draw.rectangle((w - edge, 0, w, h), fill=mat)
