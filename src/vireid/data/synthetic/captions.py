"""Text descriptions of synthetic persons for the text-to-image layouts (RGBT-PEDES, RGBNT201-PEDES).

Captions are written from the identity's attributes with varied phrasing, so that text-to-image retrieval is
learnable but not a lookup: several sentence templates, synonyms for every garment and accessory, shuffled
attribute order, and optional attributes left out at random (as human annotators do). A caption never
mentions an accessory the person lacks, and never negates one ("without a bag"), so the words a caption
contains are always true of the person.

Every caption comes with its colour-free twin (the RGBT-PEDES ``no_color_caption``), generated from the same
random choices with the colour slots left empty, so the two stay parallel and grammatical ("an orange
t-shirt" -> "a t-shirt").
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from vireid.data.synthetic.attributes import COLOUR_WORDS, Identity

_UPPER_WORDS = {
    "tshirt": ("t-shirt", "tee", "short-sleeved shirt", "short-sleeved top"),
    "longsleeve": ("long-sleeved shirt", "sweater", "long-sleeved top", "pullover"),
    "jacket": ("jacket", "zip-up jacket", "short jacket"),
    "coat": ("long coat", "coat", "overcoat", "knee-length coat"),
    "tank": ("tank top", "sleeveless top", "vest top"),
}
_LOWER_WORDS = {
    "trousers": ("trousers", "pants", "long pants"),
    "shorts": ("shorts", "short pants"),
    "skirt": ("short skirt", "skirt", "knee-length skirt"),
    "long_skirt": ("long skirt", "maxi skirt", "ankle-length skirt"),
}
_PLURAL_LOWER = {"trousers", "shorts"}
_SHOE_WORDS = {
    "sneakers": ("sneakers", "trainers", "sports shoes"),
    "shoes": ("shoes", "leather shoes", "flat shoes"),
    "boots": ("boots", "high boots", "knee-high boots"),
}
_VIEW_PHRASES = {
    "front": ("walking towards the camera", "facing the camera"),
    "back": ("walking away from the camera", "seen from behind"),
    "side": ("walking past the camera", "seen from the side"),
}

# A caption is assembled from "slots"; a colour slot is written as "{c:name}" and rendered as the colour word
# (or a synonym) in the full caption and as nothing in the colour-free one.
_COLOUR_SYNONYMS = {"gray": ("gray", "grey"), "navy": ("navy", "dark blue"), "maroon": ("maroon", "dark red")}


class _Writer:
    """Picks words with one random stream and renders both caption variants from the same choices."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def pick(self, options: tuple[str, ...] | list[str]) -> str:
        return options[int(self.rng.integers(len(options)))]

    def colour(self, *names: str) -> str:
        """A colour slot naming one colour, or two joined by "and" ("red and white")."""
        words = []
        for name in names:
            if self.rng.random() < 0.08:  # annotators sometimes leave a colour out
                continue
            words.append(self.pick(_COLOUR_SYNONYMS.get(name, (name,))))
        return "{c:" + " and ".join(words) + "}" if words else ""


def _render(template: str, with_colour: bool) -> str:
    text = re.sub(r"\{c:([^}]*)\}", (lambda m: m.group(1)) if with_colour else "", template)
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s+([,.])", r"\1", text)
    text = re.sub(
        r"\b([Aa])_ (\w)",
        lambda m: (m.group(1) + ("n" if m.group(2).lower() in "aeio" else "")) + " " + m.group(2),
        text,
    )
    text = re.sub(r"\b([Aa])_\b", r"\1", text)
    return text[0].upper() + text[1:] if text else text


def _upper_phrase(w: _Writer, p: Identity) -> str:
    noun = w.pick(_UPPER_WORDS[p.upper_type])
    c1 = w.colour(p.upper_colour)
    c2 = w.colour(p.upper_pattern_colour)
    pat = p.upper_pattern
    if pat == "plain":
        return f"a_ {c1} {noun}"
    if pat in ("hstripes", "vstripes"):
        direction = "horizontal" if pat == "hstripes" else "vertical"
        return w.pick(
            [
                f"a_ {c1} {noun} with {c2} {direction} stripes",
                f"a_ {w.colour(p.upper_colour, p.upper_pattern_colour)} {direction}ly striped {noun}",
                f"a_ {direction}ly striped {c1} {noun}",
            ]
        )
    if pat == "checks":
        kind = w.pick(["checked", "plaid", "checkered"])
        return w.pick(
            [f"a_ {w.colour(p.upper_colour, p.upper_pattern_colour)} {kind} {noun}", f"a_ {kind} {c1} {noun}"]
        )
    shape = {"circle": "round", "square": "square", "diamond": "diamond-shaped"}[p.logo_shape]
    return w.pick(
        [
            f"a_ {c1} {noun} with a_ {c2} {shape} logo on the front",
            f"a_ {c1} {noun} with a_ {c2} logo on the chest",
            f"a_ {c1} {noun} with a_ {shape} print",
        ]
    )


def _lower_phrase(w: _Writer, p: Identity) -> str:
    noun = w.pick(_LOWER_WORDS[p.lower_type])
    article = "" if p.lower_type in _PLURAL_LOWER else "a_ "
    if p.lower_pattern == "checks":
        kind = w.pick(["checked", "plaid"])
        return f"{article}{w.colour(p.lower_colour, p.lower_pattern_colour)} {kind} {noun}"
    return f"{article}{w.colour(p.lower_colour)} {noun}"


def _shoes_phrase(w: _Writer, p: Identity) -> str:
    return f"{w.colour(p.shoes_colour)} {w.pick(_SHOE_WORDS[p.shoes_type])}"


def _hair_phrase(w: _Writer, p: Identity) -> str:
    c = w.colour(p.hair_colour)
    return {
        "short": lambda: w.pick([f"short {c} hair", f"{c} hair cut short"]),
        "long": lambda: w.pick([f"long {c} hair", f"{c} hair down to the shoulders"]),
        "ponytail": lambda: w.pick([f"{c} hair in a ponytail", f"a_ {c} ponytail"]),
        "bun": lambda: w.pick([f"{c} hair tied in a bun", f"a_ {c} bun"]),
        "bald": lambda: w.pick(["a shaved head", "a bald head"]),
    }[p.hair_style]()


def _accessories(w: _Writer, p: Identity, his: str) -> list[str]:
    items: list[str] = []
    if p.hat != "none" and w.rng.random() < 0.9:
        c = w.colour(p.hat_colour)
        items.append(
            w.pick([f"a_ {c} cap", f"a_ {c} baseball cap"])
            if p.hat == "cap"
            else w.pick([f"a_ {c} beanie", f"a_ {c} knit hat"])
        )
    if p.glasses and w.rng.random() < 0.85:
        items.append(w.pick(["glasses", "a pair of glasses", "spectacles"]))
    if p.backpack and w.rng.random() < 0.95:
        c = w.colour(p.backpack_colour)
        items.append(w.pick([f"a_ {c} backpack", f"a_ {c} rucksack"]))
    if p.bag != "none" and w.rng.random() < 0.9:
        c = w.colour(p.bag_colour)
        if p.bag == "shoulder":
            items.append(w.pick([f"a_ {c} shoulder bag", f"a_ {c} bag over {his} shoulder", f"a_ {c} crossbody bag"]))
        else:
            items.append(w.pick([f"a_ {c} handbag", f"a_ {c} bag in {his} hand"]))
    order = w.rng.permutation(len(items))
    return [items[i] for i in order]


def _join(parts: list[str]) -> str:
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def describe(identity: Identity, rng: np.random.Generator, view: str | None = None) -> tuple[str, str]:
    """One caption of ``identity`` and its colour-free twin: ``(caption, no_color_caption)``.

    ``view`` (``front``/``back``/``side``), when given, may be mentioned ("walking away from the camera"),
    as annotators describe the image they see.
    """
    w = _Writer(rng)
    p = identity
    female = p.gender == "female"
    gendered = rng.random() < 0.85
    noun = (
        (w.pick(["woman", "lady", "girl"]) if female else w.pick(["man", "guy", "young man"])) if gendered else "person"
    )
    he, his = ("she", "her") if gendered and female else ("he", "his") if gendered else ("they", "their")
    verb_s = "" if he == "they" else "s"
    is_ = "are" if he == "they" else "is"
    has = "have" if he == "they" else "has"

    adjectives = []
    if rng.random() < 0.35:
        adjectives.append(
            {"slim": "slim", "heavy": w.pick(["heavy-set", "stocky"]), "medium": "medium-built"}[p.build_word]
        )
    if p.height_word and rng.random() < 0.35:
        adjectives.append(p.height_word)
    subject = f"{w.pick(['a_', 'the', 'this'])} {' '.join(adjectives)} {noun}"

    upper = _upper_phrase(w, p)
    lower = _lower_phrase(w, p) if rng.random() < 0.93 else ""
    shoes = _shoes_phrase(w, p) if rng.random() < 0.65 else ""
    hair = _hair_phrase(w, p) if rng.random() < 0.75 else ""
    extras = _accessories(w, p, his)
    view_text = w.pick(_VIEW_PHRASES[view]) if view in _VIEW_PHRASES and rng.random() < 0.3 else ""

    clothes = [x for x in (upper, lower, shoes) if x]
    templates: list[Callable[[], list[str]]] = [
        lambda: [
            f"{subject} {view_text} is wearing {_join(clothes)}.",
            f"{he} {has} {hair}." if hair else "",
            f"{he} {is_} carrying {_join(extras)}." if extras else "",
        ],
        lambda: [
            f"{subject} with {hair} wearing {_join(clothes)}." if hair else f"{subject} wearing {_join(clothes)}.",
            f"{he} {has} {_join(extras)}." if extras else "",
            f"{he} {is_} {view_text}." if view_text else "",
        ],
        lambda: [
            f"{subject} in {_join(clothes)}" + (f", with {_join(extras)}." if extras else "."),
            f"{he} {has} {hair}." if hair else "",
        ],
        lambda: [
            f"{subject} has {hair}." if hair else f"{subject} is {view_text or 'walking'}.",
            f"{he} wear{verb_s} {_join(clothes)}.",
            f"{he} also {has} {_join(extras)}." if extras else "",
        ],
    ]
    sentences = [s for s in templates[int(rng.integers(len(templates)))]() if s]
    if len(sentences) > 2 and rng.random() < 0.3:  # annotators do not keep one order
        sentences[1], sentences[2] = sentences[2], sentences[1]
    template = " ".join(sentences)
    return _cap_sentences(_render(template, True)), _cap_sentences(_render(template, False))


def _cap_sentences(text: str) -> str:
    return re.sub(r"([.!?] )([a-z])", lambda m: m.group(1) + m.group(2).upper(), text)


def colour_words_in(text: str) -> set[str]:
    """The colour words of :data:`~vireid.data.synthetic.attributes.COLOUR_WORDS` found in ``text``."""
    return {w for w in re.findall(r"[a-z]+", text.lower()) if w in COLOUR_WORDS}
