"""Persistent per-identity attributes of a synthetic person, and how they are sampled.

An :class:`Identity` is everything that stays the same across all images of one person: build, height,
hair, garments with their colours, patterns and (for the infrared renderers) thickness and near-infrared
reflectance, shoes and accessories. What changes from image to image (pose, viewpoint, scale, crop,
background, light) lives in :mod:`vireid.data.synthetic.render`.

Which cues survive which modality is a deliberate design decision:

* colours (garments, hair, shoes, bags) are visible-only: the thermal grey level of a garment comes from its
  thickness, and its near-infrared grey level is half its visible luminance and half an independent draw,
  so hue never reaches an infrared image and colour cannot be used to match across modalities;
* silhouette and build, garment lengths (sleeves, shorts, skirts, coats: bare skin is the warmest thing in
  a thermal image), wide stripes and checks (partly visible in infrared through emissivity/reflectance
  differences), hair length and large accessories (backpacks, bags, hats) are shared by both modalities and
  are large enough to survive a downscale to 64x32. They are what a model has to learn.

``difficulty`` sharpens the categorical distributions (weights are raised to a power that grows with it), so
that at high difficulty more identities share the same garments, colours and accessories.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from vireid.data.synthetic.seeding import stream

# ------------------------------------------------------------------------------------------ vocabularies

#: Named colours (sRGB). The names are the colour words that captions use and that the colour-free captions
#: remove; every name is one word.
COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (30, 30, 33),
    "white": (232, 232, 226),
    "gray": (128, 128, 132),
    "red": (192, 32, 40),
    "blue": (44, 84, 196),
    "navy": (30, 40, 92),
    "green": (42, 132, 62),
    "yellow": (228, 202, 44),
    "orange": (232, 122, 32),
    "pink": (232, 140, 172),
    "purple": (112, 52, 142),
    "brown": (112, 72, 42),
    "beige": (216, 196, 160),
    "khaki": (162, 150, 100),
    "maroon": (122, 28, 42),
}

HAIR_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (26, 22, 20),
    "brown": (92, 60, 36),
    "blonde": (204, 172, 104),
    "gray": (162, 160, 158),
    "red": (152, 62, 32),
}

#: Every word a caption may use for a colour (garments, hair, shoes, bags); removed in ``no_color_caption``.
COLOUR_WORDS: frozenset[str] = frozenset(COLOURS) | frozenset(HAIR_COLOURS) | {"grey", "dark", "light"}

SKIN_TONES: tuple[tuple[int, int, int], ...] = (
    (240, 206, 182),
    (226, 186, 152),
    (198, 152, 116),
    (152, 106, 76),
    (102, 70, 50),
)

UPPER_TYPES = ("tshirt", "longsleeve", "jacket", "coat", "tank")
UPPER_PATTERNS = ("plain", "hstripes", "vstripes", "checks", "logo")
LOWER_TYPES = ("trousers", "shorts", "skirt", "long_skirt")
LOWER_PATTERNS = ("plain", "checks")
SHOE_TYPES = ("sneakers", "shoes", "boots")
HAIR_STYLES = ("short", "long", "ponytail", "bun", "bald")
HATS = ("none", "cap", "beanie")
BAGS = ("none", "shoulder", "hand")
LOGO_SHAPES = ("circle", "square", "diamond")

#: Thermal insulation of each garment (0 = skin temperature shows through, 1 = ambient).
_UPPER_THICKNESS = {"tank": 0.22, "tshirt": 0.28, "longsleeve": 0.38, "jacket": 0.56, "coat": 0.68}
_LOWER_THICKNESS = {"shorts": 0.32, "skirt": 0.30, "trousers": 0.42, "long_skirt": 0.36}

_UPPER_COLOUR_W = {
    "black": 3.0, "white": 2.2, "gray": 2.0, "red": 1.3, "blue": 1.6, "navy": 1.8, "green": 1.1, "yellow": 0.7,
    "orange": 0.6, "pink": 0.8, "purple": 0.7, "brown": 0.9, "beige": 1.0, "khaki": 0.6, "maroon": 0.7,
}  # fmt: skip
_LOWER_COLOUR_W = {
    "black": 3.0, "white": 0.6, "gray": 1.8, "red": 0.3, "blue": 2.6, "navy": 1.8, "green": 0.4, "yellow": 0.15,
    "orange": 0.1, "pink": 0.3, "purple": 0.2, "brown": 1.0, "beige": 1.0, "khaki": 1.2, "maroon": 0.3,
}  # fmt: skip
_SHOE_COLOUR_W = {"black": 3.0, "white": 2.0, "gray": 1.0, "brown": 1.2, "blue": 0.4, "red": 0.3, "beige": 0.4}
_ACCESSORY_COLOUR_W = {
    "black": 3.0, "gray": 1.0, "brown": 1.2, "navy": 0.8, "blue": 0.8, "red": 0.8, "green": 0.5, "beige": 0.6,
    "pink": 0.5, "orange": 0.3, "white": 0.6, "purple": 0.3, "yellow": 0.3,
}  # fmt: skip
_HAIR_COLOUR_W = {"black": 4.0, "brown": 3.0, "blonde": 1.4, "gray": 0.8, "red": 0.4}


@dataclass(frozen=True)
class Identity:
    """All persistent attributes of one synthetic person.

    Geometry is in units of the person's height in the crop; colours are names from :data:`COLOURS` /
    :data:`HAIR_COLOURS`. ``*_thickness`` drive the thermal renderer, ``nir`` the near-infrared one, and
    neither is correlated with the colours.
    """

    pid: int
    gender: str  # "male" | "female"
    build: float  # width factor, ~0.78 (slim) .. ~1.32 (broad)
    height: float  # 0 (short) .. 1 (tall): longer legs, smaller head relative to the body
    skin: int  # index into SKIN_TONES
    hair_style: str
    hair_colour: str
    upper_type: str
    upper_colour: str
    upper_pattern: str
    upper_pattern_colour: str  # stripes/checks/logo colour (unused when plain)
    pattern_scale: float  # stripe/check period in units of the person height (wide vs narrow stripes)
    logo_shape: str
    lower_type: str
    lower_colour: str
    lower_pattern: str
    lower_pattern_colour: str
    shoes_type: str
    shoes_colour: str
    hat: str
    hat_colour: str
    glasses: bool
    backpack: bool
    backpack_colour: str
    bag: str
    bag_colour: str
    bag_side: int  # +1: on the person's left side, -1: right side
    upper_thickness: float
    lower_thickness: float
    pattern_emissivity: float  # thermal contrast of the pattern colour against the garment (signed)
    body_heat: float  # small per-person offset of skin temperature
    nir: Mapping[str, float]  # near-infrared reflectance per part name

    # ------------------------------------------------------------------------------------ derived views
    @property
    def build_word(self) -> str:
        """``slim`` / ``medium`` / ``heavy``: the build as a caption would name it."""
        if self.build < 0.93:
            return "slim"
        if self.build > 1.1:
            return "heavy"
        return "medium"

    @property
    def height_word(self) -> str | None:
        """``tall`` / ``short`` or ``None`` for medium height."""
        if self.height > 0.75:
            return "tall"
        if self.height < 0.25:
            return "short"
        return None

    @property
    def sleeves(self) -> str:
        """``none`` / ``short`` / ``long``: how much of the arm the upper garment covers."""
        return {"tank": "none", "tshirt": "short"}.get(self.upper_type, "long")

    def has(self, attribute: str) -> bool:
        """Whether the person has an accessory or feature named in captions (used by tests and captions)."""
        return {
            "backpack": self.backpack,
            "bag": self.bag != "none",
            "hat": self.hat != "none",
            "glasses": self.glasses,
            "logo": self.upper_pattern == "logo",
            "stripes": self.upper_pattern in ("hstripes", "vstripes"),
            "checks": self.upper_pattern == "checks" or self.lower_pattern == "checks",
        }[attribute]


# -------------------------------------------------------------------------------------------- sampling


def _sharpen(difficulty: float) -> float:
    # Raising category weights to this power makes popular choices more popular as difficulty grows, so
    # more identities share attributes (0 -> flatter than the base weights, 1 -> much peakier).
    return 0.6 + 1.4 * float(difficulty)


def _colour_sharpen(difficulty: float) -> float:
    # Colours are sharpened harder than shapes: most people wear black, white, grey, navy or blue, so at the
    # default difficulty colour alone cannot tell many identities apart and a model has to learn the
    # modality-independent cues as well.
    return 0.9 + 2.2 * float(difficulty)


def _choice(rng: np.random.Generator, weights: Mapping[str, float], power: float) -> str:
    names = list(weights)
    cum = np.cumsum(np.array([weights[n] for n in names], dtype=np.float64) ** power)
    return names[min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), len(names) - 1)]


def _contrasting(rng: np.random.Generator, base: str, power: float, exclude: Sequence[str] = ()) -> str:
    """A colour whose luminance differs clearly from ``base`` (so stripes/checks read in grey too)."""

    def lum(name: str) -> float:
        r, g, b = COLOURS[name]
        return 0.299 * r + 0.587 * g + 0.114 * b

    candidates = {
        n: w for n, w in _UPPER_COLOUR_W.items() if n != base and n not in exclude and abs(lum(n) - lum(base)) > 70
    }
    if not candidates:  # pragma: no cover - every palette colour has a far-luminance partner
        candidates = {"white": 1.0} if base != "white" else {"black": 1.0}
    return _choice(rng, candidates, power)


def sample_identity(seed: int, pid: int, difficulty: float = 0.5) -> Identity:
    """Draw the attributes of identity ``pid`` for generator seed ``seed``.

    The result depends only on ``(seed, pid, difficulty)``, never on which other identities were drawn.
    """
    rng = stream(seed, "identity", pid)
    p = _sharpen(difficulty)
    pc = _colour_sharpen(difficulty)
    gender = "female" if rng.random() < 0.45 else "male"
    female = gender == "female"

    build = float(np.clip(rng.normal(0.98 if female else 1.05, 0.13), 0.78, 1.32))
    height = float(rng.random())
    skin = int(rng.choice(len(SKIN_TONES)))

    hair_w = (
        {"short": 1.4, "long": 4.0, "ponytail": 2.4, "bun": 1.2, "bald": 0.05}
        if female
        else {"short": 6.0, "long": 0.6, "ponytail": 0.3, "bun": 0.15, "bald": 0.8}
    )
    hair_style = _choice(rng, hair_w, p)
    hair_colour = _choice(rng, _HAIR_COLOUR_W, p)

    upper_type = _choice(rng, {"tshirt": 3.0, "longsleeve": 2.4, "jacket": 2.0, "coat": 1.2, "tank": 0.9}, p)
    upper_colour = _choice(rng, _UPPER_COLOUR_W, pc)
    upper_pattern = _choice(rng, {"plain": 2.6, "hstripes": 1.5, "vstripes": 1.0, "checks": 1.2, "logo": 1.4}, p)
    upper_pattern_colour = _contrasting(rng, upper_colour, pc)
    pattern_scale = float(rng.uniform(0.065, 0.115))
    logo_shape = LOGO_SHAPES[int(rng.choice(len(LOGO_SHAPES)))]

    lower_w = (
        {"trousers": 3.4, "shorts": 1.3, "skirt": 2.0, "long_skirt": 1.3}
        if female
        else {"trousers": 5.0, "shorts": 2.0, "skirt": 0.0, "long_skirt": 0.0}
    )
    lower_type = _choice(rng, lower_w, p)
    lower_colour = _choice(rng, _LOWER_COLOUR_W, pc)
    if lower_colour == upper_colour and rng.random() < 0.7:  # matching top and bottom is rarer in practice
        lower_colour = _choice(rng, {k: v for k, v in _LOWER_COLOUR_W.items() if k != upper_colour}, pc)
    lower_pattern = _choice(rng, {"plain": 9.0, "checks": 1.0}, p)
    lower_pattern_colour = _contrasting(rng, lower_colour, pc)

    shoes_type = _choice(rng, {"sneakers": 3.0, "shoes": 3.0, "boots": 1.6 if female else 0.6}, p)
    shoes_colour = "white" if shoes_type == "sneakers" and rng.random() < 0.5 else _choice(rng, _SHOE_COLOUR_W, pc)

    hat = _choice(rng, {"none": 6.0, "cap": 1.3, "beanie": 0.8}, p)
    hat_colour = _choice(rng, _ACCESSORY_COLOUR_W, pc)
    glasses = bool(rng.random() < 0.25)
    backpack = bool(rng.random() < 0.33)
    backpack_colour = _choice(rng, _ACCESSORY_COLOUR_W, pc)
    bag = _choice(rng, {"none": 5.0, "shoulder": 1.8, "hand": 1.0}, p)
    bag_colour = _choice(rng, _ACCESSORY_COLOUR_W, pc)
    bag_side = 1 if rng.random() < 0.5 else -1

    upper_thickness = float(np.clip(_UPPER_THICKNESS[upper_type] + rng.uniform(-0.08, 0.08), 0.1, 0.85))
    lower_thickness = float(np.clip(_LOWER_THICKNESS[lower_type] + rng.uniform(-0.08, 0.08), 0.1, 0.85))
    pattern_emissivity = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.08, 0.16))
    body_heat = float(rng.normal(0.0, 0.02))

    # Near-infrared reflectance of a fabric depends on dye and material more than on its visible colour:
    # carbon-black cotton is dark in NIR, many synthetic dyes are bright whatever their hue. It is modelled
    # as half the visible luminance plus half an independent draw, so the hue never shows and two garments
    # of equal colour can differ, while dark clothes tend to stay darker (as in SYSU-MM01's NIR cameras).
    def nir_of(colour: str) -> float:
        r, g, b = COLOURS[colour]
        luminance = (0.299 * r + 0.587 * g + 0.114 * b) / 255.0
        return float(np.clip(0.5 * (0.1 + 0.8 * luminance) + 0.5 * rng.uniform(0.1, 0.9), 0.05, 0.95))

    skin_nir = float(rng.uniform(0.55, 0.72))
    garment_nir = nir_of(upper_colour)
    for _ in range(20):  # bare arms and legs must stand out from the clothes
        if abs(garment_nir - skin_nir) >= 0.15:
            break
        garment_nir = nir_of(upper_colour)
    upper_alt = nir_of(upper_pattern_colour)
    if abs(upper_alt - garment_nir) < 0.15:  # stripes and checks stay partly visible
        upper_alt = float(np.clip(garment_nir + (0.2 if garment_nir < 0.5 else -0.2), 0.05, 0.95))
    nir = {
        "skin": skin_nir,
        "hair": float(rng.uniform(0.22, 0.45)),
        "upper": garment_nir,
        "upper_alt": upper_alt,
        "lower": nir_of(lower_colour),
        "lower_alt": nir_of(lower_pattern_colour),
        "shoes": nir_of(shoes_colour),
        "hat": nir_of(hat_colour),
        "bag": nir_of(bag_colour),
        "backpack": nir_of(backpack_colour),
        "logo": nir_of(upper_pattern_colour),
    }
    return Identity(
        pid=int(pid),
        gender=gender,
        build=build,
        height=height,
        skin=skin,
        hair_style=hair_style,
        hair_colour=hair_colour,
        upper_type=upper_type,
        upper_colour=upper_colour,
        upper_pattern=upper_pattern,
        upper_pattern_colour=upper_pattern_colour,
        pattern_scale=pattern_scale,
        logo_shape=logo_shape,
        lower_type=lower_type,
        lower_colour=lower_colour,
        lower_pattern=lower_pattern,
        lower_pattern_colour=lower_pattern_colour,
        shoes_type=shoes_type,
        shoes_colour=shoes_colour,
        hat=hat,
        hat_colour=hat_colour,
        glasses=glasses,
        backpack=backpack,
        backpack_colour=backpack_colour,
        bag=bag,
        bag_colour=bag_colour,
        bag_side=bag_side,
        upper_thickness=upper_thickness,
        lower_thickness=lower_thickness,
        pattern_emissivity=pattern_emissivity,
        body_heat=body_heat,
        nir=nir,
    )
