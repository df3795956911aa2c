"""RGBNT201 reader (TOP-ReID layout): ``<root>/RGBNT201/{train_171,test}/{RGB,NI,TI}/<name>.jpg``.

The same ``<name>`` in the three folders is one aligned RGB / near-infrared / thermal triplet. Records
carry the RGB image as ``path`` and the thermal image as ``pair_path``; the NIR image is available through
:meth:`RGBNT201.ni_path`. ``<name>`` = ``<pid:06d>_cam<k>_...``: identity = the first ``_`` token, camera =
the number after ``cam`` in the second (kept as written; TOP-ReID subtracts 1). Files are listed in sorted
order and labels come from sorted identities (TOP-ReID globs unsorted and relabels via ``set``).
"""

from __future__ import annotations

import os
import re
from functools import cached_property

from vireid.data.readers.base import (
    ReidDataset,
    TrainSplit,
    held_out_train_split,
    require_nonempty,
)
from vireid.data.readers.checks import ExpectedCount, warn
from vireid.data.readers.layout import is_synthetic_root, list_image_files, require_dir
from vireid.data.records import ImageRecord, Modality
from vireid.errors import DataError

SUBSETS = {"train": "train_171", "test": "test"}
_CAM = re.compile(r"^cam(\d+)$")

EXPECTED = (
    ExpectedCount("train_ids", 171, True, "RGBNT201 layout (train_171)", "training identities"),
    ExpectedCount("test_ids", 30, True, "RGBNT201 layout", "test identities"),
    ExpectedCount("ids", 201, False, "secondary sources", "identities"),
    ExpectedCount("triplets", 4787, False, "secondary sources", "RGB/NI/TI triplets"),
)


def parse_rgbnt201_name(name: str, where: str) -> tuple[int, int]:
    """(pid, camera) from ``<pid>_cam<k>_...``; :class:`DataError` naming ``where`` otherwise."""
    tokens = os.path.splitext(name)[0].split("_")
    cam = _CAM.match(tokens[1]) if len(tokens) > 1 else None
    if not tokens[0].isdigit() or cam is None:
        raise DataError(
            f"{where}: file name '{name}' does not follow '<pid>_cam<k>_...' (e.g. 000001_cam1_0_00.jpg).",
            fix="restore the file names of the RGBNT201 release.",
        )
    return int(tokens[0]), int(cam.group(1))


class RGBNT201(ReidDataset):
    """RGBNT201 (aligned RGB / NIR / TIR triplets; 171 training and 30 test identities, 4 cameras).

    Args:
        root: the folder that holds ``RGBNT201/`` (or the ``RGBNT201`` folder itself).
        strict_counts: make a mismatch with the published counts an error.
    """

    name = "rgbnt201"
    display_name = "RGBNT201"
    layout_hint = "RGBNT201/train_171/{RGB,NI,TI} and RGBNT201/test/{RGB,NI,TI}"

    def __init__(self, root: str | None, *, strict_counts: bool = False):
        super().__init__(root, strict_counts=strict_counts)

    @cached_property
    def synthetic(self) -> bool:
        """A ``vireid synth`` marker at the root or in the dataset folder below it."""
        return is_synthetic_root(self.root) or is_synthetic_root(self.data_dir)

    @cached_property
    def data_dir(self) -> str:
        """``<root>/RGBNT201``, or the root itself when it is that folder."""
        nested = os.path.join(self.root, "RGBNT201")
        if os.path.isdir(nested):
            return nested
        if any(os.path.isdir(os.path.join(self.root, sub)) for sub in SUBSETS.values()):
            return self.root
        raise DataError(f"RGBNT201: {nested} is missing.", fix=f"pass the folder that contains {self.layout_hint}.")

    def _read(self, subset: str) -> tuple[list[ImageRecord], int]:
        folder = os.path.join(self.data_dir, SUBSETS[subset])
        rgb_dir = require_dir(os.path.join(folder, "RGB"), "RGBNT201 image folder", "extract the RGBNT201 release.")
        ti_dir = require_dir(os.path.join(folder, "TI"), "RGBNT201 thermal folder", "extract the RGBNT201 release.")
        ni_dir = os.path.join(folder, "NI")
        names, _ = list_image_files(rgb_dir)
        records: list[ImageRecord] = []
        missing_ti: list[str] = []
        with_ni = 0
        for name in names:
            pid, cam = parse_rgbnt201_name(name, rgb_dir)
            thermal = os.path.join(ti_dir, name)
            if not os.path.isfile(thermal):
                missing_ti.append(name)
                continue
            with_ni += os.path.isfile(os.path.join(ni_dir, name))
            records.append(ImageRecord(os.path.join(rgb_dir, name), pid, cam, Modality.VISIBLE, pair_path=thermal))
        if missing_ti:
            raise DataError(
                f"RGBNT201: {len(missing_ti)} images of {rgb_dir} have no thermal partner in {ti_dir}, e.g. "
                f"{missing_ti[:3]}.",
                fix="extract the TI folder completely (each RGB image needs the TI image of the same name).",
            )
        require_nonempty(records, f"RGBNT201 {subset} set {rgb_dir}", "extract the RGBNT201 release into the root.")
        return records, with_ni

    @cached_property
    def _subsets(self) -> dict[str, list[ImageRecord]]:
        train, train_ni = self._read("train")
        test, test_ni = self._read("test")
        missing_ni = len(train) + len(test) - train_ni - test_ni
        if missing_ni:
            warn(f"RGBNT201: {missing_ni} triplets have no NI image (NIR is not used by the rgbnt201.mm protocol).")
        self._ni_complete = missing_ni == 0
        train_ids = {r.pid for r in train}
        test_ids = {r.pid for r in test}
        self.compare_counts(
            {
                "train_ids": len(train_ids),
                "test_ids": len(test_ids),
                "ids": len(train_ids | test_ids),
                "triplets": len(train) + len(test),
            },
            EXPECTED,
        )
        return {"train": train, "test": test}

    def records(self, subset: str) -> list[ImageRecord]:
        """Triplet records of ``train`` (``train_171``) or ``test``, in file-name order."""
        if subset not in SUBSETS:
            raise ValueError(f"unknown RGBNT201 subset {subset!r}; use train or test")
        return list(self._subsets[subset])

    @property
    def ni_complete(self) -> bool:
        """True if every triplet has its NI image."""
        self._subsets  # noqa: B018  (reads the folders once)
        return self._ni_complete

    @staticmethod
    def ni_path(record: ImageRecord) -> str:
        """The near-infrared image of a triplet record (``.../NI/<name>``; it may be absent)."""
        rgb_dir, name = os.path.split(record.path)
        return os.path.join(os.path.dirname(rgb_dir), "NI", name)

    def train_split(self, holdout: str = "val", val_ids: int = 0, seed: int = 0) -> TrainSplit:
        """Training triplets of ``train_171``; validation on ``val_ids`` held-out identities (rule ``market``)."""
        return held_out_train_split(
            self.name,
            self.records("train"),
            holdout=holdout,
            val_ids=val_ids,
            seed=seed,
            display_name="RGBNT201",
        )
