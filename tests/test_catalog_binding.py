"""The dataset catalog binds a reader to its protocols; the reader itself knows nothing about them."""

from __future__ import annotations

import pytest

from vireid.data.catalog import get_dataset, register_dataset, unregister_dataset
from vireid.data.readers.base import ReidDataset, held_out_train_split
from vireid.data.records import ImageRecord, Modality
from vireid.errors import ProtocolError
from vireid.evaluation.protocols.base import DatasetProtocols, Protocol
from vireid.evaluation.trial import Trial


class TwoCameraReader(ReidDataset):
    """Six identities, one visible and one infrared image each; no protocol code at all."""

    name = "two_cameras"
    display_name = "TwoCameras"

    def records(self) -> list[ImageRecord]:
        return [
            ImageRecord(path=f"/x/{pid}_{m.name}.png", pid=pid, camid=int(m) + 1, modality=m)
            for pid in range(1, 7)
            for m in (Modality.VISIBLE, Modality.INFRARED)
        ]

    def train_split(self, holdout: str = "val", val_ids: int = 0, seed: int = 0):
        return held_out_train_split(
            self.name, self.records(), holdout=holdout, val_ids=val_ids, seed=seed, display_name=self.display_name
        )


class VisibleToInfrared(Protocol):
    def __init__(self, reader: TwoCameraReader):
        super().__init__("two.v2i", range(1), rule="market", max_rank=5, meta={"dataset": reader.name})
        self.reader = reader

    def _select(self, index: int):
        records = self.reader.records()
        return [r for r in records if r.modality is Modality.VISIBLE], [
            r for r in records if r.modality is Modality.INFRARED
        ]


def validation(reader: TwoCameraReader, split) -> Trial:
    query = tuple(r for r in split.val_records if r.modality is Modality.VISIBLE)
    gallery = tuple(r for r in split.val_records if r.modality is Modality.INFRARED)
    return Trial(protocol_id="two.val", index=0, query=query, gallery=gallery, rule="market", max_rank=5)


BINDING = DatasetProtocols(
    ids=("two.v2i",), standard=("two.v2i",), make=lambda reader, pid: VisibleToInfrared(reader), validation=validation
)


@pytest.fixture
def registered():
    register_dataset("two_cameras", lambda root: TwoCameraReader(root), protocols=BINDING)
    yield
    unregister_dataset("two_cameras")


def test_catalog_binds_protocols_and_validation_to_a_reader(registered):
    ds = get_dataset("two-cameras", "/x")
    assert isinstance(ds.reader, TwoCameraReader) and ds.display_name == "TwoCameras"  # forwarded to the reader
    assert ds.protocol_ids() == ["two.v2i"] and ds.standard_protocols() == ["two.v2i"]
    trial = ds.protocol("two.v2i").trial(0)
    assert [r.pid for r in trial.query] == [1, 2, 3, 4, 5, 6] and {r.modality for r in trial.gallery} == {
        Modality.INFRARED
    }
    with pytest.raises(ProtocolError, match=r"TwoCameras has no protocol 'two.v2j'. Did you mean 'two.v2i'"):
        ds.protocol("two.v2j")

    split = ds.train_split(holdout="val", val_ids=2, seed=0)
    (val,) = split.val_trials
    held = set(split.val_pids)
    assert len(held) == 2 and {r.pid for r in val.query} == held == {r.pid for r in val.gallery}
    assert not held & {r.pid for r in split.records}
    # The reader alone holds the identities out but builds no trial: that is the binding's job.
    alone = TwoCameraReader("/x").train_split(holdout="val", val_ids=2, seed=0)
    assert alone.val_trials == [] and set(alone.val_pids) == held and len(alone.val_records) == 4
    assert ds.train_split(holdout="none").val_trials == []


def test_builtin_datasets_are_bound_to_their_protocol_modules():
    from vireid.data.catalog import dataset_protocols
    from vireid.evaluation.protocols.sysu import SYSU_PROTOCOLS
    from vireid.evaluation.protocols.text import TEXT_PROTOCOLS

    assert dataset_protocols("sysu") is SYSU_PROTOCOLS
    assert dataset_protocols("rgbt_pedes") is TEXT_PROTOCOLS is dataset_protocols("RGBNT201-PEDES")
    assert "sysu.all.multi.official" in get_dataset("sysu", "/nowhere").protocol_ids()  # nothing read yet
