"""LLCM protocols ``llcm.ir2vis``, ``llcm.vis2ir`` and ``llcm.vis2ir.deen_release`` (data spec 3.3).

Trials t = 0..9 draw single-shot galleries exactly like SYSU-MM01's ``random`` sampler (seed t, sorted
test identities, cameras in list order, ``rng.choice`` over sorted files, no draw for an absent folder).

- ``ir2vis`` (DEEN ``test_mode=[1, 2]``, the default): every NIR test image queries one VIS image per
  (identity, VIS camera 1..9).
- ``vis2ir``: every VIS test image queries one NIR image per (identity, NIR camera 1, 2, 4..9).
- ``vis2ir.deen_release``: what DEEN ``test.py`` computes for ``test_mode=[2, 1]``. It transposes the score
  matrix, so the *sampled NIR images are the queries* and the *full VIS set is the gallery*. The README's
  updated VIS->IR numbers match this computation; it is offered only under this label.

Rule ``llcm``: gallery items with the query's identity and camera number are dropped; de-duplicated CMC.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import PurePath
from typing import TYPE_CHECKING

from vireid.data.readers.base import CameraFolder
from vireid.data.readers.llcm import TEST_CAMERAS
from vireid.data.records import ImageRecord, Modality
from vireid.errors import DataError
from vireid.evaluation.protocols.base import DatasetProtocols, Protocol
from vireid.evaluation.protocols.sampling import sample_random
from vireid.evaluation.trial import Trial

if TYPE_CHECKING:
    from vireid.data.readers.llcm import LLCM

NUM_TRIALS = 10
DIRECTIONS = ("ir2vis", "vis2ir", "vis2ir.deen_release")
LLCM_PROTOCOL_IDS = tuple(f"llcm.{d}" for d in DIRECTIONS)


class LlcmProtocol(Protocol):
    """One LLCM direction; trials 0..9."""

    def __init__(self, dataset: LLCM, direction: str):
        if direction not in DIRECTIONS:
            raise ValueError(f"unknown LLCM direction {direction!r}; use one of {', '.join(DIRECTIONS)}")
        # One modality is sampled per trial (the gallery, or the queries in deen_release); the other is
        # used in full and is the same for every trial.
        sampled = Modality.VISIBLE if direction == "ir2vis" else Modality.INFRARED
        meta = {
            "dataset": "llcm",
            "direction": direction,
            "sampler": "random",
            "shots": 1,
            "query_modality": "nir" if direction in ("ir2vis", "vis2ir.deen_release") else "vis",
            "sampled": "query" if direction == "vis2ir.deen_release" else "gallery",
        }
        super().__init__(f"llcm.{direction}", range(NUM_TRIALS), rule="llcm", max_rank=20, meta=meta)
        self.dataset = dataset
        self.direction = direction
        self.sampled_modality = sampled

    @cached_property
    def fixed_side(self) -> tuple[ImageRecord, ...]:
        """The side that is the same in every trial: all test images of the other modality."""
        full = Modality.INFRARED if self.sampled_modality is Modality.VISIBLE else Modality.VISIBLE
        images = tuple(self.dataset.test_images(full))
        if not images:
            raise DataError(
                f"LLCM at {self.dataset.root}: the test identities have no {full.short} images.",
                fix="check idx/test_id.txt and the test_vis/ and test_nir/ folders.",
            )
        return images

    @cached_property
    def sampled_folders(self) -> list[CameraFolder]:
        mod = self.sampled_modality
        folders = self.dataset.camera_folders(mod, self.dataset.test_ids(), TEST_CAMERAS[mod])
        if not folders:
            raise DataError(
                f"LLCM at {self.dataset.root}: the test identities have no {mod.short} images to sample.",
                fix="check idx/test_id.txt and the test_vis/ and test_nir/ folders.",
            )
        return folders

    def sampled(self, trial: int) -> list[ImageRecord]:
        """The one-image-per-(identity, camera) sample of trial ``trial``."""
        return sample_random(self.sampled_folders, seed=trial, shots=1)

    def _select(self, index: int) -> tuple[Sequence[ImageRecord], Sequence[ImageRecord]]:
        if self.direction == "vis2ir.deen_release":
            return self.sampled(index), self.fixed_side
        return self.fixed_side, self.sampled(index)


def llcm_validation_trial(held_out: Sequence[ImageRecord]) -> Trial:
    """``ir2vis`` on held-out training identities: all NIR images vs one VIS image per (identity, camera).

    Training images are not in camera folders; their folders are rebuilt from (identity, file-name camera)
    with files in name order, and sampled with ``random.Random(0)`` like test trial 0.
    """
    unknown = [r.path for r in held_out if r.camid < 0]
    if unknown:
        raise DataError(
            f"LLCM: the camera of {len(unknown)} held-out training images cannot be read from their names "
            f"(expected '<pid>_c<cc>_...'), e.g. {unknown[0]}; the validation trial needs cameras.",
            fix="train without validation (holdout='none', eval.selection=last).",
        )

    def name_order(r: ImageRecord) -> tuple[str, str]:
        return PurePath(r.path).name, r.path

    groups: dict[tuple[int, int], list[ImageRecord]] = {}
    for r in held_out:
        if r.modality is Modality.VISIBLE:
            groups.setdefault((r.pid, r.camid), []).append(r)
    folders = [CameraFolder(pid, cam, tuple(sorted(groups[(pid, cam)], key=name_order))) for pid, cam in sorted(groups)]
    query = sorted(
        (r for r in held_out if r.modality is Modality.INFRARED), key=lambda r: (r.pid, r.camid, *name_order(r))
    )
    gallery = sample_random(folders, seed=0, shots=1)
    if not query or not gallery:
        raise DataError("LLCM: the held-out validation identities have no images.", fix="use holdout='none'.")
    return Trial(
        protocol_id="llcm.val.ir2vis",
        index=0,
        query=tuple(query),
        gallery=tuple(gallery),
        rule="llcm",
        max_rank=20,
        meta={"dataset": "llcm", "split": "val", "direction": "ir2vis", "sampler": "random", "shots": 1, "trial": 0},
    )


def _llcm_make(dataset, protocol_id) -> Protocol:
    return LlcmProtocol(dataset, protocol_id.removeprefix("llcm."))


def _llcm_validation(dataset, split) -> Trial:
    return llcm_validation_trial(split.val_records)


LLCM_PROTOCOLS = DatasetProtocols(
    ids=LLCM_PROTOCOL_IDS,
    standard=("llcm.ir2vis", "llcm.vis2ir"),
    make=_llcm_make,
    validation=_llcm_validation,
)
"""LLCM's protocols, bound to the ``llcm`` reader by the dataset catalog."""
