"""RGBNT201 multi-spectral protocol ``rgbnt201.mm`` (data spec 3.5, secondary).

Query = gallery = every test triplet (records: ``path`` = RGB, ``pair_path`` = TI). Rule ``market``: gallery
items with the query's identity and camera are dropped (this removes the query itself); plain CMC; one
pass. TOP-ReID scores with the squared Euclidean distance of L2-normalised features, which ranks like
cosine similarity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from vireid.data.records import ImageRecord
from vireid.evaluation.protocols.base import DatasetProtocols, Protocol
from vireid.evaluation.trial import Trial

if TYPE_CHECKING:
    from vireid.data.readers.rgbnt201 import RGBNT201


class Rgbnt201Protocol(Protocol):
    """All test triplets against themselves, one trial (index 0)."""

    def __init__(self, dataset: RGBNT201):
        super().__init__(
            "rgbnt201.mm",
            (0,),
            rule="market",
            max_rank=20,
            meta={
                "dataset": "rgbnt201",
                "modalities": "RGB+TI",
                "ni_available": dataset.ni_complete,
                "score": "squared_euclidean_normalised",
            },
        )
        self.dataset = dataset

    def _select(self, index: int) -> tuple[Sequence[ImageRecord], Sequence[ImageRecord]]:
        records = tuple(self.dataset.records("test"))
        return records, records


def rgbnt201_validation_trial(held_out: Sequence[ImageRecord]) -> Trial:
    """``rgbnt201.mm`` on held-out training identities (query = gallery, rule ``market``)."""
    records = tuple(held_out)
    return Trial(
        protocol_id="rgbnt201.val.mm",
        index=0,
        query=records,
        gallery=records,
        rule="market",
        max_rank=20,
        meta={"dataset": "rgbnt201", "split": "val", "modalities": "RGB+TI", "trial": 0},
    )


def _rgbnt201_make(dataset, protocol_id) -> Protocol:
    return Rgbnt201Protocol(dataset)


def _rgbnt201_validation(dataset, split) -> Trial:
    return rgbnt201_validation_trial(split.val_records)


RGBNT201_PROTOCOLS = DatasetProtocols(
    ids=("rgbnt201.mm",),
    standard=("rgbnt201.mm",),
    make=_rgbnt201_make,
    validation=_rgbnt201_validation,
)
"""RGBNT201's protocol, bound to the ``rgbnt201`` reader by the dataset catalog."""
