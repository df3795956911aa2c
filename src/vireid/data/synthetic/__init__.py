"""Procedural cross-modal persons, written in the exact on-disk layouts of the real datasets (``vireid synth``)."""

from vireid.data.synthetic.attributes import Identity, sample_identity
from vireid.data.synthetic.captions import describe
from vireid.data.synthetic.layouts import (
    LAYOUT_DEFAULTS,
    LAYOUTS,
    MARKER_NAME,
    ImageCount,
    SynthOptions,
    SynthSummary,
    read_marker,
    write_layout,
)
from vireid.data.synthetic.preview import write_preview
from vireid.data.synthetic.render import ImageConditions, render_person, render_views, sample_conditions
from vireid.data.synthetic.scene import CameraProfile

__all__ = [
    "LAYOUTS",
    "LAYOUT_DEFAULTS",
    "MARKER_NAME",
    "CameraProfile",
    "Identity",
    "ImageConditions",
    "ImageCount",
    "SynthOptions",
    "SynthSummary",
    "describe",
    "read_marker",
    "render_person",
    "render_views",
    "sample_conditions",
    "sample_identity",
    "write_layout",
    "write_preview",
]
