"""A protocol trial: one labelled query set, one labelled gallery set, and the rules to score them.

Protocols (``vireid.evaluation.protocols``) produce trials; the runner (``vireid.evaluation.runner``)
extracts features for them and calls ``evaluate``. Query and gallery are kept as separate labelled lists,
never split by position in one feature matrix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from vireid.data.records import CaptionRecord, ImageRecord

Rule = Literal["sysu", "llcm", "regdb", "market", "text"]


@dataclass(frozen=True)
class Trial:
    """One evaluation pass.

    Attributes:
        protocol_id: e.g. ``sysu.all.single.random``, ``regdb.v2t``, ``llcm.ir2vis``, ``text.t2rgbt``.
        index: trial number as the protocol names it (SYSU/LLCM 0..9, RegDB 1..10, text 0).
        query: query records (images, or captions for text protocols).
        gallery: gallery records (images; for text protocols RGB+T pairs with ``pair_path`` set).
        rule: junk/CMC rule passed to ``evaluate`` (see data-and-protocols.md sections 2-3).
        max_rank: CMC length (20 for ReID, 10 for text).
        meta: protocol metadata recorded with every result (mode, shots, sampler, direction, ...).
    """

    protocol_id: str
    index: int
    query: tuple[ImageRecord, ...] | tuple[CaptionRecord, ...]
    gallery: tuple[ImageRecord, ...]
    rule: Rule
    max_rank: int = 20
    meta: dict[str, Any] = field(default_factory=dict)
