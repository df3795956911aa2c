"""LLCM reader (DEEN layout): ``idx/train_{vis,nir}.txt``, ``idx/test_id.txt``, ``test_{vis,nir}/cam<K>/<pid>/``.

Training images come from the index lists (``<relative path> <label>``, labels 0..712 shared by both
modalities); their camera is read from the file name ``<pid>_c<cc>_s<seq>_f<frame>_<vis|nir>.jpg``
(the validation trial needs it). Test images are read from the camera folders: camera = the number of the
``cam<K>`` component (multi-digit safe, unlike DEEN), identity = the ``<pid>`` folder. Camera numbers are
shared by both modalities (each camera switches between VIS and NIR). ``test_nir/cam3`` is empty in the
release and is skipped, as in DEEN (data spec 1.3).

Do not use IDKL's alternative files (``idx/test_{vis,nir}.txt``): their paths mislabel modalities.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

from vireid.data.readers.base import (
    CameraFolder,
    ReidDataset,
    TrainSplit,
    drop_single_modality,
    held_out_train_split,
    require_nonempty,
)
from vireid.data.readers.checks import ExpectedCount, warn
from vireid.data.readers.index_files import IndexEntry, read_id_list, read_labelled_list
from vireid.data.readers.layout import list_image_files, list_subdirs, numeric_folders, require_dir, require_file
from vireid.data.records import ImageRecord, Modality
from vireid.errors import DataError

VISIBLE_CAMERAS = (1, 2, 3, 4, 5, 6, 7, 8, 9)
INFRARED_CAMERAS = (1, 2, 4, 5, 6, 7, 8, 9)
TEST_FOLDER = {Modality.VISIBLE: "test_vis", Modality.INFRARED: "test_nir"}
TRAIN_LIST = {Modality.VISIBLE: "train_vis.txt", Modality.INFRARED: "train_nir.txt"}
TEST_CAMERAS = {Modality.VISIBLE: VISIBLE_CAMERAS, Modality.INFRARED: INFRARED_CAMERAS}

_NAME = re.compile(r"^(\d+)_c(\d+)_")
_CAM_DIR = re.compile(r"^cam(\d+)$")

EXPECTED = (
    ExpectedCount("ids", 1064, True, "LLCM README", "identities (training labels + test_id.txt)"),
    ExpectedCount("train_ids", 713, True, "DEEN n_class", "training identities"),
    ExpectedCount("test_ids", 351, True, "1,064 - 713", "identities in idx/test_id.txt"),
    # The README's box count predates the revision of the release, hence only a warning.
    ExpectedCount("images", 46767, False, "LLCM README, before the revision", "images (training lists + test folders)"),
)


@dataclass(frozen=True)
class _TestScan:
    test_ids: tuple[int, ...]
    folders: dict[tuple[Modality, int, int], tuple[ImageRecord, ...]]  # (modality, camid, pid) -> records


def camera_from_name(relpath: str) -> tuple[int | None, int | None]:
    """(pid, camera) from a training file name ``<pid>_c<cc>_...``, else camera from a ``cam<K>`` folder."""
    parts = relpath.split("/")
    match = _NAME.match(parts[-1])
    if match:
        return int(match.group(1)), int(match.group(2))
    for part in reversed(parts[:-1]):
        folder = _CAM_DIR.match(part)
        if folder:
            return None, int(folder.group(1))
    return None, None


class LLCM(ReidDataset):
    """LLCM (visible-near-infrared in low light; 1,064 identities, 9 cameras).

    Args:
        root: the folder that holds ``idx/``, ``test_vis/`` and ``test_nir/`` (and the training images
            named by the index lists).
        strict_counts: make a mismatch with the published counts an error.
    """

    name = "llcm"
    display_name = "LLCM"
    layout_hint = "idx/ (train_vis.txt, train_nir.txt, test_id.txt), test_vis/ and test_nir/"

    def __init__(self, root: str | None, *, strict_counts: bool = False):
        super().__init__(root, strict_counts=strict_counts)

    # ------------------------------------------------------------------------------------------- reading

    def _read_train_list(self, modality: Modality) -> list[tuple[ImageRecord, IndexEntry]]:
        path = require_file(
            os.path.join(self.root, "idx", TRAIN_LIST[modality]),
            "LLCM training index file",
            "copy idx/ of the LLCM release (DEEN layout) into the root.",
        )
        out = []
        for entry in read_labelled_list(path):
            _, camid = camera_from_name(entry.path)
            record = ImageRecord(
                path=os.path.join(self.root, *entry.path.split("/")),
                pid=entry.label,
                camid=-1 if camid is None else camid,
                modality=modality,
            )
            out.append((record, entry))
        if not out:
            raise DataError(f"LLCM index file {path} lists no images.", fix="restore it from the LLCM release.")
        return out

    @cached_property
    def _train(self) -> list[ImageRecord]:
        pairs = self._read_train_list(Modality.VISIBLE) + self._read_train_list(Modality.INFRARED)
        # Labels are the identities; where file names carry a pid, both must correspond one-to-one.
        name_of: dict[int, tuple[int, IndexEntry]] = {}
        label_of: dict[int, tuple[int, IndexEntry]] = {}
        for _, entry in pairs:
            name_pid, _ = camera_from_name(entry.path)
            if name_pid is None:
                continue
            for table, key, value in ((name_of, entry.label, name_pid), (label_of, name_pid, entry.label)):
                if key in table and table[key][0] != value:
                    first = table[key][1]
                    raise DataError(
                        f"LLCM: {os.path.basename(entry.file)} line {entry.line} ('{entry.path}', label "
                        f"{entry.label}) disagrees with {os.path.basename(first.file)} line {first.line} "
                        f"('{first.path}', label {first.label}): labels and file-name identities must "
                        f"correspond one-to-one.",
                        fix="restore idx/train_vis.txt and idx/train_nir.txt from the LLCM release.",
                    )
                table.setdefault(key, (value, entry))
        missing = [(r, e) for r, e in pairs if not os.path.isfile(r.path)]
        if missing:
            examples = "; ".join(f"{e.path} ({os.path.basename(e.file)} line {e.line})" for _, e in missing[:3])
            raise DataError(
                f"LLCM: {len(missing)} training images listed in idx/ do not exist under {self.root}, e.g. {examples}.",
                fix="extract the LLCM training images completely into the root.",
            )
        return [r for r, _ in pairs]

    @cached_property
    def _test(self) -> _TestScan:
        ids_path = require_file(
            os.path.join(self.root, "idx", "test_id.txt"),
            "LLCM test identity file",
            "copy idx/test_id.txt of the LLCM release (DEEN layout) into the root.",
        )
        test_ids = tuple(read_id_list(ids_path))
        folders: dict[tuple[Modality, int, int], tuple[ImageRecord, ...]] = {}
        unused: set[str] = set()
        for modality, top in TEST_FOLDER.items():
            top_dir = require_dir(
                os.path.join(self.root, top),
                "LLCM test folder",
                f"extract {top}/ of the LLCM release into the root ({self.layout_hint}).",
            )
            dirs, _ = list_subdirs(top_dir)
            cams = {int(m.group(1)): d for d in dirs if (m := _CAM_DIR.match(d))}
            strays = [d for d in dirs if not _CAM_DIR.match(d)]
            if strays:
                warn(f"LLCM: folders in {top_dir} that are not camera folders (cam<K>) are ignored: {strays[:5]}.")
            absent = [c for c in TEST_CAMERAS[modality] if c not in cams]
            if absent:
                warn(f"LLCM: {top}/ has no folders for cameras {absent}; they contribute no images.")
            for cam, cam_name in sorted(cams.items()):
                cam_dir = os.path.join(top_dir, cam_name)
                used = cam in TEST_CAMERAS[modality]
                for pid, pid_name in numeric_folders(cam_dir, "identity").items():
                    folder = os.path.join(cam_dir, pid_name)
                    names, _ = list_image_files(folder)
                    if not names:
                        continue
                    if not used:
                        unused.add(f"{top}/{cam_name}")
                    folders[(modality, cam, pid)] = tuple(
                        ImageRecord(os.path.join(folder, n), pid, cam, modality) for n in names
                    )
        if unused:
            warn(
                f"LLCM: {', '.join(sorted(unused))} hold images, but the protocols use only VIS cameras 1-9 and NIR "
                f"cameras 1, 2, 4-9 (DEEN; test_nir/cam3 is empty in the release)."
            )
        scan = _TestScan(test_ids, folders)
        train_ids = {r.pid for r in self._train}
        self.compare_counts(
            {
                "ids": len(train_ids) + len(test_ids),
                "train_ids": len(train_ids),
                "test_ids": len(test_ids),
                "images": len(self._train) + sum(len(v) for v in folders.values()),
            },
            EXPECTED,
        )
        return scan

    # ------------------------------------------------------------------------------------------- access

    def test_ids(self) -> list[int]:
        """Identities of ``idx/test_id.txt`` in numeric order."""
        return list(self._test.test_ids)

    def camera_folders(
        self, modality: Modality | str, pids: Iterable[int], cameras: Sequence[int]
    ) -> list[CameraFolder]:
        """Existing test folders ``test_<mod>/cam<K>/<pid>``: sorted pids (id-major), cameras in list order."""
        mod = Modality.parse(modality)
        out = []
        for pid in sorted(pids):
            for cam in cameras:
                records = self._test.folders.get((mod, cam, pid))
                if records is not None:
                    out.append(CameraFolder(pid, cam, records))
        return out

    def test_images(self, modality: Modality | str) -> list[ImageRecord]:
        """Every test image of one modality: by identity, then camera (protocol list), then file name."""
        mod = Modality.parse(modality)
        return [r for f in self.camera_folders(mod, self.test_ids(), TEST_CAMERAS[mod]) for r in f.records]

    def train_records(self) -> list[ImageRecord]:
        """Training images of both lists (visible first), in index-file order, unlabelled."""
        return list(self._train)

    # ------------------------------------------------------------------------------------------- splits

    def train_split(self, holdout: str = "val", val_ids: int = 0, seed: int = 0) -> TrainSplit:
        """Training images and a validation trial on ``val_ids`` held-out training identities.

        The validation trial mimics ``llcm.ir2vis``: every NIR image of the held-out identities queries
        one VIS image per (identity, camera) drawn with ``random.Random(0)``, rule ``llcm``; cameras come
        from the file names.
        """
        records, dropped = drop_single_modality(self._train, "LLCM")
        require_nonempty(records, "LLCM cross-modal training set", "check idx/train_vis.txt and idx/train_nir.txt.")
        return held_out_train_split(
            self.name,
            records,
            holdout=holdout,
            val_ids=val_ids,
            seed=seed,
            display_name="LLCM",
            dropped_pids=dropped,
        )
