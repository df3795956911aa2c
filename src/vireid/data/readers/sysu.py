"""SYSU-MM01 reader: ``<root>/cam{1..6}/<pid>/<k>.jpg`` and ``<root>/exp/{train,val,test}_id.txt``.

Reads the JPEGs of the official release directly (the AGW family pre-packs them into ``.npy`` files).
Camera, identity and modality come from the ``camN`` and ``<pid>`` folder names under the root (G2);
cameras 1, 2, 4, 5 are visible, 3 and 6 infrared. Training = ``train_id`` (+ ``val_id`` when nothing is
held out) = 395 identities; the official ``val_id`` identities form the validation trial.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

from vireid.data.readers.base import (
    CameraFolder,
    ReidDataset,
    TrainSplit,
    assign_labels,
    check_holdout,
    drop_single_modality,
    require_nonempty,
)
from vireid.data.readers.checks import ExpectedCount, logger, warn
from vireid.data.readers.index_files import id_list_line, read_id_list
from vireid.data.readers.layout import list_image_files, numeric_folders, require_dir, require_file
from vireid.data.records import ImageRecord, Modality
from vireid.errors import DataError

VISIBLE_CAMERAS = (1, 2, 4, 5)
INFRARED_CAMERAS = (3, 6)
CAMERAS = (1, 2, 3, 4, 5, 6)

_README = "official README"
EXPECTED = (
    ExpectedCount("ids", 491, True, _README, "identities in train/val/test_id.txt"),
    ExpectedCount("train_ids", 296, True, _README, "identities in exp/train_id.txt"),
    ExpectedCount("val_ids", 99, True, _README, "identities in exp/val_id.txt"),
    ExpectedCount("test_ids", 96, True, _README, "identities in exp/test_id.txt"),
    ExpectedCount("visible_images", 30071, True, _README, "visible images (cam1, cam2, cam4, cam5)"),
    ExpectedCount("infrared_images", 15792, True, _README, "infrared images (cam3, cam6)"),
    ExpectedCount("train_visible_images", 22258, False, "secondary sources", "visible training images"),
    ExpectedCount("train_infrared_images", 11909, False, "secondary sources", "infrared training images"),
)


@dataclass(frozen=True)
class _Scan:
    train_ids: tuple[int, ...]
    val_ids: tuple[int, ...]
    test_ids: tuple[int, ...]
    folders: dict[tuple[int, int], tuple[ImageRecord, ...]]  # (camid, pid) -> records sorted by file name


class SysuMM01(ReidDataset):
    """SYSU-MM01 (visible-infrared, 491 identities, 6 cameras).

    Args:
        root: the folder that holds ``cam1`` ... ``cam6`` and ``exp/``.
        strict_counts: make a mismatch with the official counts an error.

    ``exp/rand_perm_cam.mat`` (from the official evaluation package) is needed only by the ``official``
    gallery sampler.
    """

    name = "sysu"
    display_name = "SYSU-MM01"
    layout_hint = "cam1 ... cam6 and exp/ (train_id.txt, val_id.txt, test_id.txt)"

    def __init__(self, root: str | None, *, strict_counts: bool = False):
        super().__init__(root, strict_counts=strict_counts)

    # ------------------------------------------------------------------------------------------- reading

    @cached_property
    def _scan(self) -> _Scan:
        root = self.root
        exp = require_dir(
            os.path.join(root, "exp"),
            "SYSU-MM01 split folder",
            "copy exp/ (train_id.txt, val_id.txt, test_id.txt) from the official release into the root.",
        )
        ids = {}
        for split in ("train", "val", "test"):
            path = require_file(
                os.path.join(exp, f"{split}_id.txt"),
                "SYSU-MM01 split file",
                "copy it from exp/ of the official release (one line of comma-separated identities).",
            )
            ids[split] = tuple(read_id_list(path))
        folders: dict[tuple[int, int], tuple[ImageRecord, ...]] = {}
        empty: list[str] = []
        ignored: list[str] = []
        for cam in CAMERAS:
            cam_dir = require_dir(
                os.path.join(root, f"cam{cam}"),
                "SYSU-MM01 camera folder",
                f"extract the full image archive so that the root holds cam1 ... cam6 ({self.layout_hint}).",
            )
            modality = Modality.INFRARED if cam in INFRARED_CAMERAS else Modality.VISIBLE
            for pid, folder_name in numeric_folders(cam_dir, "identity").items():
                folder = os.path.join(cam_dir, folder_name)
                names, others = list_image_files(folder)
                ignored.extend(os.path.join(folder, o) for o in others)
                if not names:
                    empty.append(folder)
                    continue
                folders[(cam, pid)] = tuple(ImageRecord(os.path.join(folder, n), pid, cam, modality) for n in names)
        present = {pid for _, pid in folders}
        for split in ("train", "val", "test"):
            absent = [pid for pid in ids[split] if pid not in present]
            if absent:
                # Otherwise the identity silently vanishes from the split (no images, no error).
                path = os.path.join(exp, f"{split}_id.txt")
                raise DataError(
                    f"{path}, line {id_list_line(path)}: identity {absent[0]} has no folder cam<1..6>/{absent[0]:04d} "
                    f"with images under {root}"
                    + (f" ({len(absent)} such identities: {absent[:5]})." if len(absent) > 1 else "."),
                    fix="extract the full image archive, or remove these identities from the id file.",
                )
        if empty:
            warn(f"SYSU-MM01: {len(empty)} identity folders hold no images and are treated as absent: {empty[:5]}.")
        if ignored:
            warn(f"SYSU-MM01: {len(ignored)} entries that are not images were ignored, e.g. {ignored[:3]}.")
        scan = _Scan(ids["train"], ids["val"], ids["test"], folders)
        self._check_counts(scan)
        return scan

    def _check_counts(self, scan: _Scan) -> None:
        train = set(scan.train_ids) | set(scan.val_ids)
        found = {
            "ids": len(train | set(scan.test_ids)),
            "train_ids": len(scan.train_ids),
            "val_ids": len(scan.val_ids),
            "test_ids": len(scan.test_ids),
            "visible_images": sum(len(v) for (c, _), v in scan.folders.items() if c in VISIBLE_CAMERAS),
            "infrared_images": sum(len(v) for (c, _), v in scan.folders.items() if c in INFRARED_CAMERAS),
            "train_visible_images": sum(
                len(v) for (c, p), v in scan.folders.items() if c in VISIBLE_CAMERAS and p in train
            ),
            "train_infrared_images": sum(
                len(v) for (c, p), v in scan.folders.items() if c in INFRARED_CAMERAS and p in train
            ),
        }
        self.compare_counts(found, EXPECTED)
        overlap = (set(scan.train_ids) | set(scan.val_ids)) & set(scan.test_ids)
        if overlap:
            warn(f"SYSU-MM01: identities {sorted(overlap)[:10]} are in both the training and the test id files.")

    # ------------------------------------------------------------------------------------------- access

    def ids(self, split: str) -> list[int]:
        """Identities of ``split`` (``train``, ``val``, ``test``, or ``trainval`` = the 395 training ids)."""
        scan = self._scan
        table = {
            "train": scan.train_ids,
            "val": scan.val_ids,
            "test": scan.test_ids,
            "trainval": tuple(sorted(set(scan.train_ids) | set(scan.val_ids))),
        }
        if split not in table:
            raise ValueError(f"unknown SYSU-MM01 split {split!r}; use one of {', '.join(table)}")
        return list(table[split])

    def folder(self, camid: int, pid: int) -> tuple[ImageRecord, ...] | None:
        """Records of ``cam<camid>/<pid>`` sorted by file name, or ``None`` if the folder is absent."""
        return self._scan.folders.get((camid, pid))

    def camera_folders(self, pids: Iterable[int], cameras: Sequence[int]) -> list[CameraFolder]:
        """Existing folders in the reference order: sorted pids (id-major), then ``cameras`` in list order."""
        out = []
        for pid in sorted(pids):
            for cam in cameras:
                records = self.folder(cam, pid)
                if records is not None:
                    out.append(CameraFolder(pid, cam, records))
        return out

    def images(self, pids: Iterable[int], cameras: Sequence[int]) -> list[ImageRecord]:
        """Every image of ``pids`` in ``cameras``, ordered by pid, then camera list order, then file name."""
        return [r for f in self.camera_folders(pids, cameras) for r in f.records]

    @property
    def rand_perm_path(self) -> str:
        """Where the ``official`` sampler looks for the official permutation file."""
        return os.path.join(self.root, "exp", "rand_perm_cam.mat")

    # ------------------------------------------------------------------------------------------- splits

    def train_split(self, holdout: str = "val", val_ids: int = 0, seed: int = 0) -> TrainSplit:
        """Training images and the validation trial.

        ``holdout="val"``: train on ``train_id.txt`` (296 ids) and validate on the official ``val_id.txt``
        identities (infrared queries vs one visible image per (id, camera), trial 0, rule ``sysu``).
        ``holdout="none"``: train on train + val = the standard 395 identities, no validation trial.
        ``val_ids`` and ``seed`` do not apply: SYSU-MM01 has an official validation split.
        """
        check_holdout(holdout)
        if val_ids:
            logger.info("SYSU-MM01 uses the official exp/val_id.txt for validation; val_ids=%d is ignored.", val_ids)
        pids = self.ids("train") if holdout == "val" else self.ids("trainval")
        records = self.images(pids, CAMERAS)
        require_nonempty(
            records, f"SYSU-MM01 training set under {self.root}", "check cam1 ... cam6 and exp/train_id.txt."
        )
        records, dropped = drop_single_modality(records, "SYSU-MM01")
        require_nonempty(records, "SYSU-MM01 cross-modal training set", "check that cam3/cam6 hold the training ids.")
        records, num_classes = assign_labels(records)
        val_pids = tuple(self.ids("val")) if holdout == "val" else ()
        return TrainSplit(
            dataset=self.name,
            records=records,
            num_classes=num_classes,
            val_trials=[],
            holdout=holdout,
            val_pids=val_pids,
            dropped_pids=dropped,
            meta={"val_source": "exp/val_id.txt" if holdout == "val" else None},
            val_records=tuple(self.images(val_pids, CAMERAS)),
        )
