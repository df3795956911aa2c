"""Uniform sample records shared by every reader, protocol and training pipeline.

Data flows one way: reader -> records -> protocol (query/gallery lists per trial) -> features ->
``evaluate`` -> report. Records are small frozen dataclasses so that they are hashable (feature caches key
on them), cheap to pickle into DataLoader workers, and impossible to mutate by accident.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class Modality(IntEnum):
    """Imaging modality of a record. Thermal (TIR) and near-infrared (NIR) are both ``INFRARED``.

    The integer values are used in batches (``modality`` tensor: 0 visible, 1 infrared) and route images
    to modality-specific stems.
    """

    VISIBLE = 0
    INFRARED = 1

    @classmethod
    def parse(cls, value: str | int | Modality) -> Modality:
        """Accept ``visible``/``rgb``/``vis``/0 and ``infrared``/``ir``/``thermal``/``nir``/``tir``/1."""
        if isinstance(value, Modality):
            return value
        if isinstance(value, int):
            return cls(value)
        key = str(value).strip().lower()
        if key in {"visible", "vis", "rgb", "v", "0"}:
            return cls.VISIBLE
        if key in {"infrared", "ir", "thermal", "nir", "tir", "t", "1"}:
            return cls.INFRARED
        raise ValueError(f"unknown modality {value!r}; use 'visible' or 'infrared'")

    @property
    def short(self) -> str:
        return "vis" if self is Modality.VISIBLE else "ir"


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """One image of one person.

    Attributes:
        path: absolute path of the image file.
        pid: identity as written in the dataset (folder name or index-file label), never relabelled.
        camid: camera number as written in the dataset (SYSU ``cam3`` -> 3); synthetic for RegDB (V=1, T=2).
        modality: :class:`Modality` of the image.
        label: contiguous training label ``0..N-1`` (``-1`` for evaluation records); assigned by the reader
            from ``sorted(unique pids)`` so it is deterministic.
        pair_path: for aligned multi-modal datasets (RGBT-PEDES, RGBNT201) the thermal image that pairs
            with ``path`` (which is then the RGB image); ``None`` otherwise.
        captions: text descriptions of this image pair (text datasets only).
        no_color_captions: the same captions with colour words removed, parallel to ``captions``.
    """

    path: str
    pid: int
    camid: int
    modality: Modality
    label: int = -1
    pair_path: str | None = None
    captions: tuple[str, ...] = ()
    no_color_captions: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CaptionRecord:
    """One text query (or one training caption) and the image pair it describes.

    Attributes:
        text: the caption.
        pid: identity of the described person (dataset id).
        pair_index: index of the described pair in the split's list of :class:`ImageRecord`.
        label: contiguous training label (``-1`` for evaluation).
        no_color_text: the colour-free variant of ``text`` (equal to ``text`` when the dataset has none).
    """

    text: str
    pid: int
    pair_index: int
    label: int = -1
    no_color_text: str = ""


def relabel(pids: list[int] | tuple[int, ...]) -> dict[int, int]:
    """Map dataset identities to contiguous training labels: ``sorted(unique pids)`` -> ``0..N-1``.

    Never uses ``set`` iteration order or ``pid - 1`` (both seen in public code, see the data spec G5).
    """
    return {pid: label for label, pid in enumerate(sorted(set(pids)))}
