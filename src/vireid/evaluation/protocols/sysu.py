"""SYSU-MM01 protocols ``sysu.{all,indoor}.{single,multi}.{random,official}`` (data spec 3.1).

Query: every cam3 and cam6 image of the 96 test identities in both modes, ordered by identity, then cam3
before cam6, then file name (3,803 images, shared by all trials). Gallery: cameras 1, 2, 4, 5 (``all``) or
1, 2 (``indoor``), one (``single``) or ten (``multi``) images per (identity, camera), drawn per trial
t = 0..9 by the ``random`` sampler (AGW/CAJ/DEEN/MCE/DAKD) or the ``official`` one (MATLAB/MPANet/IDKL).
The sampler is part of the id because the two give different galleries. Rule ``sysu``: a cam3 query
ignores every cam2 gallery image; CMC is de-duplicated.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING

from vireid.data.readers.base import CameraFolder
from vireid.data.readers.checks import ExpectedCount
from vireid.data.records import ImageRecord
from vireid.errors import DataError
from vireid.evaluation.protocols.base import DatasetProtocols, Protocol
from vireid.evaluation.protocols.sampling import (
    OfficialPermutations,
    load_official_permutations,
    sample_official,
    sample_random,
)
from vireid.evaluation.trial import Trial

if TYPE_CHECKING:
    from vireid.data.readers.sysu import SysuMM01

QUERY_CAMERAS = (3, 6)
GALLERY_CAMERAS = {"all": (1, 2, 4, 5), "indoor": (1, 2)}
SHOTS = {"single": 1, "multi": 10}
SAMPLERS = ("random", "official")
NUM_TRIALS = 10
SYSU_PROTOCOL_IDS = tuple(
    f"sysu.{mode}.{shot}.{sampler}" for mode in GALLERY_CAMERAS for shot in SHOTS for sampler in SAMPLERS
)

_AGW = "AGW issues #4, #8"
_EXPECTED_QUERY = (ExpectedCount("query", 3803, True, _AGW, "query images (cam3 + cam6 of the test ids)"),)
_EXPECTED_GALLERY = {
    ("all", 1): ExpectedCount("gallery", 301, True, _AGW, "all-search single-shot gallery images"),
    ("indoor", 1): ExpectedCount("gallery", 112, False, "secondary sources", "indoor single-shot gallery images"),
    ("all", 10): ExpectedCount("gallery", 3010, False, "secondary sources", "all-search multi-shot gallery images"),
    ("indoor", 10): ExpectedCount("gallery", 1120, False, "secondary sources", "indoor multi-shot gallery images"),
}


class SysuProtocol(Protocol):
    """One SYSU-MM01 protocol (mode x shots x sampler); trials 0..9."""

    def __init__(self, dataset: SysuMM01, mode: str, shots: int, sampler: str):
        if mode not in GALLERY_CAMERAS:
            raise ValueError(f"unknown SYSU-MM01 mode {mode!r}; use all or indoor")
        if shots not in SHOTS.values():
            raise ValueError(f"SYSU-MM01 shots must be 1 or 10, not {shots!r}")
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown SYSU-MM01 sampler {sampler!r}; use random or official")
        shot_name = "single" if shots == 1 else "multi"
        super().__init__(
            f"sysu.{mode}.{shot_name}.{sampler}",
            range(NUM_TRIALS),
            rule="sysu",
            max_rank=20,
            meta={
                "dataset": "sysu",
                "mode": mode,
                "shots": shots,
                "sampler": sampler,
                "query_cameras": list(QUERY_CAMERAS),
                "gallery_cameras": list(GALLERY_CAMERAS[mode]),
            },
        )
        self.dataset = dataset
        self._gallery_size_checked = False
        self.mode = mode
        self.shots = shots
        self.sampler = sampler

    @classmethod
    def from_id(cls, dataset: SysuMM01, protocol_id: str) -> SysuProtocol:
        _, mode, shot_name, sampler = protocol_id.split(".")
        return cls(dataset, mode, SHOTS[shot_name], sampler)

    @cached_property
    def query(self) -> tuple[ImageRecord, ...]:
        """The 3,803 infrared queries, the same for every trial and both modes."""
        ds = self.dataset
        query = tuple(ds.images(ds.ids("test"), QUERY_CAMERAS))
        if not query:
            raise DataError(
                f"SYSU-MM01 at {ds.root}: the test identities have no images in cam3 or cam6.",
                fix="check exp/test_id.txt and that cam3/ and cam6/ were extracted.",
            )
        ds.compare_counts({"query": len(query)}, _EXPECTED_QUERY)
        return query

    @cached_property
    def gallery_folders(self) -> list[CameraFolder]:
        """Existing gallery folders of the test identities, id-major and camera-minor."""
        ds = self.dataset
        folders = ds.camera_folders(ds.ids("test"), GALLERY_CAMERAS[self.mode])
        if not folders:
            raise DataError(
                f"SYSU-MM01 at {ds.root}: the test identities have no images in cameras {GALLERY_CAMERAS[self.mode]}.",
                fix="check exp/test_id.txt and the visible camera folders.",
            )
        return folders

    @cached_property
    def permutations(self) -> OfficialPermutations:
        return load_official_permutations(self.dataset.rand_perm_path)

    def gallery(self, trial: int) -> list[ImageRecord]:
        """The gallery of trial ``trial`` (0..9)."""
        if self.sampler == "random":
            gallery = sample_random(self.gallery_folders, seed=trial, shots=self.shots)
        else:
            lookup = {(f.camid, f.pid): f for f in self.gallery_folders}
            gallery = sample_official(
                lookup,
                self.dataset.ids("test"),
                GALLERY_CAMERAS[self.mode],
                self.permutations,
                trial=trial,
                shots=self.shots,
            )
        if not self._gallery_size_checked:
            # Every trial has the same gallery size (one or ten draws per folder), so one check suffices.
            expected = _EXPECTED_GALLERY[(self.mode, self.shots)]
            self.dataset.compare_counts({"gallery": len(gallery)}, (expected,))
            self._gallery_size_checked = True
        return gallery

    def _select(self, index: int) -> tuple[Sequence[ImageRecord], Sequence[ImageRecord]]:
        return self.query, self.gallery(index)


def sysu_validation_trial(dataset: SysuMM01, val_pids: Sequence[int]) -> Trial:
    """Validation trial on the official ``val_id`` identities, built like the all-search test protocol.

    Infrared (cam3, cam6) queries against one visible image per (identity, camera) drawn with
    ``random.Random(0)`` (trial 0), rule ``sysu``.
    """
    query = dataset.images(val_pids, QUERY_CAMERAS)
    gallery = sample_random(dataset.camera_folders(val_pids, GALLERY_CAMERAS["all"]), seed=0, shots=1)
    if not query or not gallery:
        raise DataError(
            f"SYSU-MM01 at {dataset.root}: the validation identities of exp/val_id.txt have no "
            f"{'infrared' if not query else 'visible'} images.",
            fix="check exp/val_id.txt, or train without validation (holdout='none').",
        )
    return Trial(
        protocol_id="sysu.val",
        index=0,
        query=tuple(query),
        gallery=tuple(gallery),
        rule="sysu",
        max_rank=20,
        meta={"dataset": "sysu", "split": "val", "mode": "all", "shots": 1, "sampler": "random", "trial": 0},
    )


def _sysu_validation(dataset, split) -> Trial:
    return sysu_validation_trial(dataset, split.val_pids)


SYSU_PROTOCOLS = DatasetProtocols(
    ids=SYSU_PROTOCOL_IDS,
    standard=("sysu.all.single.random", "sysu.indoor.single.random"),
    make=SysuProtocol.from_id,
    validation=_sysu_validation,
)
"""SYSU-MM01's protocols, bound to the ``sysu`` reader by the dataset catalog."""
