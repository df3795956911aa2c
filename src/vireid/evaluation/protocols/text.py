"""Text -> RGB+thermal pair protocol ``text.t2rgbt`` (data spec 3.4; IRRA ``utils/metrics.py:rank``).

Queries: every non-empty test caption (:class:`CaptionRecord`, ``pair_index`` = its pair in the gallery).
Gallery: every test pair (one embedding per RGB+thermal pair); pairs listed twice are kept, with a
warning. Rule ``text``: no filtering, plain CMC R1/R5/R10 (``max_rank`` 10), one trial. Every query must
have a positive in the gallery: the reference returns NaN AP and crashes in mINP otherwise, vireid raises.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from vireid.data.readers.checks import warn
from vireid.data.readers.rgbt_pedes import caption_samples
from vireid.data.records import CaptionRecord, ImageRecord
from vireid.errors import DataError, ProtocolError
from vireid.evaluation.protocols.base import DatasetProtocols, Protocol
from vireid.evaluation.trial import Trial

if TYPE_CHECKING:
    from vireid.data.readers.rgbt_pedes import _TextPairDataset

MAX_RANK = 10


def text_query_gallery(records: Sequence[ImageRecord], where: str) -> tuple[list[CaptionRecord], list[ImageRecord]]:
    """Caption queries and pair gallery of one split, checked (see module docstring)."""
    gallery = list(records)
    if not gallery:
        raise DataError(f"{where}: the split has no image pairs.", fix="check the split values of the annotation file.")
    queries = caption_samples(gallery)
    if not queries:
        raise DataError(f"{where}: the split has no non-empty captions.", fix="check the annotation file.")
    duplicates = [key for key, n in Counter((r.path, r.pair_path) for r in gallery).items() if n > 1]
    if duplicates:
        warn(f"{where}: {len(duplicates)} image pairs appear more than once in the gallery; all copies are kept.")
    gallery_pids = {r.pid for r in gallery}
    orphans = [q for q in queries if q.pid not in gallery_pids]
    if orphans:
        raise ProtocolError(f"{where}: {len(orphans)} caption queries have no positive in the gallery.")
    return queries, gallery


class TextProtocol(Protocol):
    """``text.t2rgbt`` on the test split of an RGBT-PEDES-schema dataset (one trial, index 0)."""

    def __init__(self, dataset: _TextPairDataset):
        super().__init__(
            "text.t2rgbt",
            (0,),
            rule="text",
            max_rank=MAX_RANK,
            meta={"dataset": dataset.name, "direction": "t2rgbt", "split": "test", "annotations": dataset.annotations},
        )
        self.dataset = dataset

    def _select(self, index: int) -> tuple[Sequence[CaptionRecord], Sequence[ImageRecord]]:
        return text_query_gallery(self.dataset.records("test"), f"{self.dataset.display_name} test split")


def text_validation_trial(records: Sequence[ImageRecord], dataset: str) -> Trial:
    """``text.t2rgbt`` on validation pairs (the JSON's val split or held-out training identities)."""
    query, gallery = text_query_gallery(records, f"{dataset} validation split")
    return Trial(
        protocol_id="text.val.t2rgbt",
        index=0,
        query=tuple(query),
        gallery=tuple(gallery),
        rule="text",
        max_rank=MAX_RANK,
        meta={"dataset": dataset, "split": "val", "direction": "t2rgbt", "trial": 0},
    )


def _text_make(dataset, protocol_id) -> Protocol:
    return TextProtocol(dataset)


def _text_validation(dataset, split) -> Trial:
    return text_validation_trial(split.val_records, dataset.name)


TEXT_PROTOCOLS = DatasetProtocols(
    ids=("text.t2rgbt",),
    standard=("text.t2rgbt",),
    make=_text_make,
    validation=_text_validation,
)
"""The text -> RGB+T protocol of RGBT-PEDES and RGBNT201-PEDES, bound to both readers by the catalog."""
