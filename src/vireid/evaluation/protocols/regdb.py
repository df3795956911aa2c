"""RegDB protocols ``regdb.v2t`` and ``regdb.t2v`` (data spec 3.2).

Trial k uses every image of ``test_visible_k`` / ``test_thermal_k`` (2,060 + 2,060): ``v2t`` queries with
visible images against the thermal gallery (AGW default), ``t2v`` the reverse. Rule ``regdb``: no junk
removal and the plain CMC (IDKL's de-duplicated CMC inflates R5 and above). A protocol object evaluates
only the trial its reader was opened with: a RegDB model is trained on one trial's training ids, and
testing it on another trial's test ids mixes training and test identities.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from vireid.data.records import ImageRecord, Modality
from vireid.errors import DataError
from vireid.evaluation.protocols.base import DatasetProtocols, Protocol
from vireid.evaluation.trial import Trial

if TYPE_CHECKING:
    from vireid.data.readers.regdb import RegDB

DIRECTIONS = ("v2t", "t2v")


class RegdbProtocol(Protocol):
    """All test images of the reader's trial, in one direction."""

    def __init__(self, dataset: RegDB, direction: str):
        if direction not in DIRECTIONS:
            raise ValueError(f"unknown RegDB direction {direction!r}; use v2t or t2v")
        super().__init__(
            f"regdb.{direction}",
            (dataset.trial,),
            rule="regdb",
            max_rank=20,
            meta={"dataset": "regdb", "direction": direction, "regdb_trial": dataset.trial},
        )
        self.dataset = dataset
        self.direction = direction

    def _select(self, index: int) -> tuple[Sequence[ImageRecord], Sequence[ImageRecord]]:
        visible = self.dataset.records("test", Modality.VISIBLE)
        thermal = self.dataset.records("test", Modality.INFRARED)
        return (visible, thermal) if self.direction == "v2t" else (thermal, visible)


def regdb_validation_trial(held_out: Sequence[ImageRecord], trial: int) -> Trial:
    """Visible queries vs thermal gallery on held-out training identities (all images, rule ``regdb``)."""
    query = [r for r in held_out if r.modality is Modality.VISIBLE]
    gallery = [r for r in held_out if r.modality is Modality.INFRARED]
    if not query or not gallery:
        raise DataError("RegDB: the held-out validation identities have no images.", fix="use holdout='none'.")
    return Trial(
        protocol_id="regdb.val.v2t",
        index=trial,
        query=tuple(query),
        gallery=tuple(gallery),
        rule="regdb",
        max_rank=20,
        meta={"dataset": "regdb", "split": "val", "direction": "v2t", "regdb_trial": trial, "trial": trial},
    )


def _regdb_make(dataset, protocol_id) -> Protocol:
    return RegdbProtocol(dataset, protocol_id.split(".")[1])


def _regdb_validation(dataset, split) -> Trial:
    return regdb_validation_trial(split.val_records, dataset.trial)


REGDB_PROTOCOLS = DatasetProtocols(
    ids=tuple(f"regdb.{d}" for d in DIRECTIONS),
    standard=tuple(f"regdb.{d}" for d in DIRECTIONS),
    make=_regdb_make,
    validation=_regdb_validation,
)
"""RegDB's protocols (both directions of the reader's trial), bound to the ``regdb`` reader by the catalog."""
