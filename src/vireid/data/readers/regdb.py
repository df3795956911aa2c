"""RegDB reader: ``<root>/{Visible,Thermal}/<id>/*.bmp`` listed by ``<root>/idx/<split>_<modality>_<t>.txt``.

Each index line is ``<relative path> <label>``; the label is the identity (data spec 1.2). The reader
checks what IDKL silently papers over: the labels and the ``<id>`` folders must correspond one-to-one
within a split, and the top folder must match the modality of the list. Cameras are synthetic (visible = 1,
thermal = 2) and never cause removals. A reader serves one trial ``t = 1..10``: the model trained on
``train_*_t`` is tested on ``test_*_t`` only.
"""

from __future__ import annotations

import os
from functools import cached_property

from vireid.data.readers.base import (
    ReidDataset,
    TrainSplit,
    drop_single_modality,
    held_out_train_split,
    require_nonempty,
)
from vireid.data.readers.checks import ExpectedCount, warn
from vireid.data.readers.index_files import IndexEntry, read_labelled_list
from vireid.data.readers.layout import require_dir, require_file
from vireid.data.records import ImageRecord, Modality
from vireid.errors import ConfigError, DataError

TRIALS = tuple(range(1, 11))
CAMERA = {Modality.VISIBLE: 1, Modality.INFRARED: 2}
TOP_FOLDER = {Modality.VISIBLE: "Visible", Modality.INFRARED: "Thermal"}
LIST_NAME = {Modality.VISIBLE: "visible", Modality.INFRARED: "thermal"}

_AGW = "AGW issue #4"
EXPECTED = (
    ExpectedCount("ids", 412, True, "RegDB paper", "identities (distinct <id> folders in train + test lists)"),
    ExpectedCount("train_ids", 206, True, _AGW, "training identities"),
    ExpectedCount("test_ids", 206, True, _AGW, "test identities"),
    ExpectedCount("train_visible_images", 2060, True, _AGW, "visible training images"),
    ExpectedCount("train_thermal_images", 2060, True, _AGW, "thermal training images"),
    ExpectedCount("test_visible_images", 2060, True, _AGW, "visible test images"),
    ExpectedCount("test_thermal_images", 2060, True, _AGW, "thermal test images"),
)


class RegDB(ReidDataset):
    """RegDB (visible-thermal, 412 identities, one aligned camera pair), one of its 10 trials.

    Args:
        root: the folder that holds ``Visible/``, ``Thermal/`` and ``idx/``.
        trial: 1..10, selects ``idx/*_{trial}.txt`` for training and testing.
        strict_counts: make a mismatch with the published counts an error.
    """

    name = "regdb"
    display_name = "RegDB"
    layout_hint = "Visible/, Thermal/ and idx/ (train_visible_1.txt, test_thermal_1.txt, ...)"

    def __init__(self, root: str | None, *, trial: int = 1, strict_counts: bool = False):
        super().__init__(root, strict_counts=strict_counts)
        if isinstance(trial, bool) or not isinstance(trial, int) or trial not in TRIALS:
            raise ConfigError(f"RegDB trial={trial!r} is not valid; use an integer from 1 to 10 (data.trial).")
        self.trial = trial

    def __repr__(self) -> str:
        return f"RegDB(root={self._root_arg!r}, trial={self.trial})"

    # ------------------------------------------------------------------------------------------- reading

    def index_path(self, split: str, modality: Modality) -> str:
        """``<root>/idx/<split>_<visible|thermal>_<trial>.txt``."""
        return os.path.join(self.root, "idx", f"{split}_{LIST_NAME[modality]}_{self.trial}.txt")

    def _read_list(self, split: str, modality: Modality) -> list[tuple[ImageRecord, IndexEntry]]:
        path = require_file(
            self.index_path(split, modality),
            "RegDB index file",
            "copy idx/ from the RegDB release (train/test x visible/thermal x trials 1..10) into the root.",
        )
        out = []
        first_line: dict[str, int] = {}
        for entry in read_labelled_list(path):
            # A repeated line would silently put the same image twice into the gallery (or training set).
            key = entry.path
            if key in first_line:
                raise DataError(
                    f"{path}, line {entry.line}: '{entry.path}' is already listed on line {first_line[key]}; "
                    f"every image may be listed once.",
                    fix="delete the repeated line (or restore the index file from the RegDB release).",
                )
            first_line[key] = entry.line
            parts = entry.path.split("/")
            if len(parts) < 3 or parts[0].lower() != TOP_FOLDER[modality].lower():
                raise DataError(
                    f"{path}, line {entry.line}: '{entry.path}' should look like "
                    f"'{TOP_FOLDER[modality]}/<id>/<file>.bmp' in the {LIST_NAME[modality]} list.",
                    fix="restore the index file from the RegDB release.",
                )
            out.append(
                (
                    ImageRecord(
                        path=os.path.join(self.root, *parts),
                        pid=entry.label,
                        camid=CAMERA[modality],
                        modality=modality,
                    ),
                    entry,
                )
            )
        if not out:
            raise DataError(f"RegDB index file {path} lists no images.", fix="restore it from the RegDB release.")
        return out

    def _read_split(self, split: str) -> tuple[list[ImageRecord], set[str]]:
        require_dir(os.path.join(self.root, "idx"), "RegDB index folder", "copy idx/ from the RegDB release.")
        pairs = self._read_list(split, Modality.VISIBLE) + self._read_list(split, Modality.INFRARED)
        self._check_one_to_one(pairs)
        missing = [(r, e) for r, e in pairs if not os.path.isfile(r.path)]
        if missing:
            examples = "; ".join(f"{e.path} ({os.path.basename(e.file)} line {e.line})" for _, e in missing[:3])
            raise DataError(
                f"RegDB: {len(missing)} images listed in the trial-{self.trial} {split} index files do not exist "
                f"under {self.root}, e.g. {examples}.",
                fix="extract Visible/ and Thermal/ completely into the root.",
            )
        folders = {e.path.split("/")[1] for _, e in pairs}
        return [r for r, _ in pairs], folders

    @staticmethod
    def _check_one_to_one(pairs: list[tuple[ImageRecord, IndexEntry]]) -> None:
        """Labels and ``<id>`` folders must be in one-to-one correspondence within a split."""
        folder_of: dict[int, tuple[str, IndexEntry]] = {}
        label_of: dict[str, tuple[int, IndexEntry]] = {}
        for _, entry in pairs:
            folder = entry.path.split("/")[1]
            if entry.label in folder_of and folder_of[entry.label][0] != folder:
                first = folder_of[entry.label][1]
                raise DataError(
                    f"RegDB: label {entry.label} is given to images of folder '{folder}' "
                    f"({os.path.basename(entry.file)} line {entry.line}) and of folder '{first.path.split('/')[1]}' "
                    f"({os.path.basename(first.file)} line {first.line}); labels and <id> folders must correspond "
                    f"one-to-one.",
                    fix="restore the index files from the RegDB release.",
                )
            if folder in label_of and label_of[folder][0] != entry.label:
                first = label_of[folder][1]
                raise DataError(
                    f"RegDB: folder '{folder}' has label {entry.label} ({os.path.basename(entry.file)} line "
                    f"{entry.line}) and label {first.label} ({os.path.basename(first.file)} line {first.line}); "
                    f"labels and <id> folders must correspond one-to-one.",
                    fix="restore the index files from the RegDB release.",
                )
            folder_of.setdefault(entry.label, (folder, entry))
            label_of.setdefault(folder, (entry.label, entry))

    @cached_property
    def _splits(self) -> dict[str, list[ImageRecord]]:
        train, train_folders = self._read_split("train")
        test, test_folders = self._read_split("test")
        overlap = train_folders & test_folders
        if overlap:
            warn(f"RegDB trial {self.trial}: identity folders {sorted(overlap)[:10]} are in both train and test.")

        def count(records: list[ImageRecord], modality: Modality) -> int:
            return sum(r.modality is modality for r in records)

        self.compare_counts(
            {
                "ids": len(train_folders | test_folders),
                "train_ids": len({r.pid for r in train}),
                "test_ids": len({r.pid for r in test}),
                "train_visible_images": count(train, Modality.VISIBLE),
                "train_thermal_images": count(train, Modality.INFRARED),
                "test_visible_images": count(test, Modality.VISIBLE),
                "test_thermal_images": count(test, Modality.INFRARED),
            },
            EXPECTED,
        )
        return {"train": train, "test": test}

    def records(self, split: str, modality: Modality | str | None = None) -> list[ImageRecord]:
        """Records of ``split`` (``train`` or ``test``) of this trial, in index-file order."""
        if split not in ("train", "test"):
            raise ValueError(f"unknown RegDB split {split!r}; use train or test")
        out = self._splits[split]
        if modality is None:
            return list(out)
        wanted = Modality.parse(modality)
        return [r for r in out if r.modality is wanted]

    # ------------------------------------------------------------------------------------------- splits

    def train_split(self, holdout: str = "val", val_ids: int = 0, seed: int = 0) -> TrainSplit:
        """Training images of this trial and a validation trial on held-out training identities.

        ``holdout="val"`` holds out ``val_ids`` identities (0 = 10%, at least 2) chosen from ``seed``; the
        validation trial is visible queries vs thermal gallery on them (all images, rule ``regdb``).
        """
        records, dropped = drop_single_modality(self.records("train"), f"RegDB trial {self.trial}")
        require_nonempty(records, f"RegDB trial-{self.trial} training set", "check idx/train_*_{trial}.txt.")
        return held_out_train_split(
            self.name,
            records,
            holdout=holdout,
            val_ids=val_ids,
            seed=seed,
            display_name="RegDB",
            dropped_pids=dropped,
            meta={"trial": self.trial},
        )
