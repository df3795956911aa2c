"""Text -> RGB+thermal pair datasets: RGBT-PEDES (data spec 1.5) and RGBNT201-PEDES (1.6, an assumption).

Both use one JSON annotation file: a list of ``{split, id, file_path, captions, no_color_caption}``;
``split`` is ``train``, ``test`` or anything else (= validation); ``id`` is the identity (an int starting
at 1); ``no_color_caption`` parallels ``captions`` with colour words removed. A record is one calibrated
RGB+thermal pair (``path`` = RGB, ``pair_path`` = thermal) carrying its captions.

Training: one sample per non-empty caption, labels from sorted ids (G5; RGBT-PEDE uses ``id - 1`` with its
contiguity check commented out). Evaluation: queries are the non-empty captions, the gallery is every pair.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from functools import cached_property

from vireid.data.readers.base import (
    ReidDataset,
    TrainSplit,
    assign_labels,
    check_holdout,
    require_nonempty,
    select_holdout_ids,
)
from vireid.data.readers.checks import ExpectedCount, warn
from vireid.data.readers.layout import is_synthetic_root, require_file
from vireid.data.records import CaptionRecord, ImageRecord, Modality
from vireid.errors import ConfigError, DataError

logger = logging.getLogger("vireid.data")

DEFAULT_ANNOTATIONS = "caption_2_no_color.json"
THERMAL_DIRS = ("T", "TGray")
SPLITS = ("train", "val", "test")
_CAM = re.compile(r"^\d+_cam(\d+)_")


@dataclass(frozen=True)
class CaptionAnnotation:
    """One entry of the annotation JSON (``index`` = its position in the file, for messages)."""

    index: int
    split: str
    pid: int
    file_path: str
    captions: tuple[str, ...]
    no_color_captions: tuple[str, ...]


def read_caption_annotations(path: str) -> list[CaptionAnnotation]:
    """Parse and check an RGBT-PEDES-schema JSON file.

    ``split`` values other than ``train`` and ``test`` become ``val`` (as in RGBT-PEDE). A missing or
    shorter ``no_color_caption`` list is completed with the captions themselves, with a warning.

    Raises:
        DataError: invalid JSON (line and column), or an entry without a required key or with a wrong type
            (entry index and key).
    """
    with open(path, "rb") as handle:
        raw = handle.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        # JSON is UTF-8 by definition; a Latin-1 or Windows-1252 file would otherwise end in a traceback.
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{path}, line {line}: byte 0x{raw[exc.start]:02x} is not UTF-8; annotation files must be UTF-8 JSON.",
            fix=f"re-save the file as UTF-8, e.g. iconv -f latin1 -t utf-8 {path} > fixed.json.",
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}, line {exc.lineno} column {exc.colno}: invalid JSON ({exc.msg}).") from None
    if not isinstance(data, list):
        raise DataError(f"{path} must hold a JSON list of annotation entries, not a {type(data).__name__}.")
    out: list[CaptionAnnotation] = []
    incomplete = 0
    for i, entry in enumerate(data):
        where = f"{path}, entry {i}"
        if not isinstance(entry, dict):
            raise DataError(f"{where}: expected an object with split, id, file_path, captions.")
        for key in ("split", "id", "file_path", "captions"):
            if key not in entry:
                raise DataError(f"{where}: key '{key}' is missing (keys: {sorted(entry)}).")
        try:
            pid = int(entry["id"])
        except (TypeError, ValueError):
            raise DataError(f"{where}: 'id' must be an integer, got {entry['id']!r}.") from None
        captions = entry["captions"]
        if isinstance(captions, str):
            captions = [captions]
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            raise DataError(f"{where}: 'captions' must be a list of strings.")
        if not isinstance(entry["file_path"], str) or not entry["file_path"].strip():
            raise DataError(f"{where}: 'file_path' must be a non-empty string.")
        no_color = entry.get("no_color_caption", [])
        if isinstance(no_color, str):
            no_color = [no_color]
        if not isinstance(no_color, list) or not all(isinstance(c, str) for c in no_color):
            raise DataError(f"{where}: 'no_color_caption' must be a list of strings.")
        if len(no_color) < len(captions):
            incomplete += 1
            no_color = list(no_color) + list(captions[len(no_color) :])
        split = str(entry["split"])
        out.append(
            CaptionAnnotation(
                index=i,
                split=split if split in ("train", "test") else "val",
                pid=pid,
                file_path=entry["file_path"].replace("\\", "/"),
                captions=tuple(captions),
                no_color_captions=tuple(no_color[: len(captions)]),
            )
        )
    if incomplete:
        warn(
            f"{path}: {incomplete} entries have fewer 'no_color_caption' items than captions; "
            f"the captions themselves stand in for the missing ones."
        )
    return out


def caption_samples(records: list[ImageRecord]) -> list[CaptionRecord]:
    """One :class:`CaptionRecord` per non-empty caption, in record order (``pair_index`` = record index).

    "Non-empty" follows the reference test ``if caption``; labels are copied from the records.
    """
    out = []
    for index, record in enumerate(records):
        for text, no_color in zip(record.captions, record.no_color_captions):
            if text:
                out.append(CaptionRecord(text, record.pid, index, record.label, no_color))
    return out


class _TextPairDataset(ReidDataset):
    """Shared reading of the caption JSON and the pair images; subclasses resolve image paths."""

    def __init__(self, root: str | None, *, annotations: str = DEFAULT_ANNOTATIONS, strict_counts: bool = False):
        super().__init__(root, strict_counts=strict_counts)
        if not isinstance(annotations, str) or not annotations.strip():
            raise ConfigError(f"{self.display_name}: annotations={annotations!r} must name a JSON file.")
        self.annotations = annotations

    @property
    def data_dir(self) -> str:
        return self.root

    @cached_property
    def annotation_path(self) -> str:
        path = os.path.join(self.data_dir, self.annotations)
        return require_file(
            path,
            f"{self.display_name} annotation file",
            f"put the caption JSON there, or name another file with the annotations option ({self.layout_hint}).",
        )

    def _resolve(self, ann: CaptionAnnotation) -> tuple[str, str, int]:
        """(RGB path, thermal path, camera) of an annotation."""
        raise NotImplementedError

    def _check_counts(self, annotations: list[CaptionAnnotation], records: dict[str, list[ImageRecord]]) -> None:
        """Compare with published numbers (subclasses)."""

    @cached_property
    def _records(self) -> dict[str, list[ImageRecord]]:
        annotations = read_caption_annotations(self.annotation_path)
        require_nonempty(annotations, f"{self.display_name} annotation file {self.annotation_path}", "check the file.")
        records: dict[str, list[ImageRecord]] = {split: [] for split in SPLITS}
        missing: list[str] = []
        for ann in annotations:
            rgb, thermal, camid = self._resolve(ann)
            for path in (rgb, thermal):
                if not os.path.isfile(path):
                    missing.append(f"{path} (entry {ann.index})")
            records[ann.split].append(
                ImageRecord(
                    path=rgb,
                    pid=ann.pid,
                    camid=camid,
                    modality=Modality.VISIBLE,
                    pair_path=thermal,
                    captions=ann.captions,
                    no_color_captions=ann.no_color_captions,
                )
            )
        if missing:
            raise DataError(
                f"{self.display_name}: {len(missing)} images named by {self.annotation_path} do not exist, e.g. "
                f"{missing[:3]}.",
                fix="extract the image folders completely into the root.",
            )
        self._check_collisions(annotations)
        logger.info(
            "%s: %s",
            self.display_name,
            ", ".join(
                f"{split} {len(recs)} pairs / {len({r.pid for r in recs})} ids / "
                f"{sum(bool(c) for r in recs for c in r.captions)} captions"
                for split, recs in records.items()
            ),
        )
        self._check_counts(annotations, records)
        return records

    def _check_collisions(self, annotations: list[CaptionAnnotation]) -> None:
        """Different ``file_path`` values that share a basename resolve to the same image: report them."""
        paths_by_name: dict[str, set[str]] = {}
        ids_by_name: dict[str, set[int]] = {}
        for ann in annotations:
            name = ann.file_path.rsplit("/", 1)[-1]
            paths_by_name.setdefault(name, set()).add(ann.file_path)
            ids_by_name.setdefault(name, set()).add(ann.pid)
        collided = sorted(name for name, paths in paths_by_name.items() if len(paths) > 1)
        if collided:
            mixed = [name for name in collided if len(ids_by_name[name]) > 1]
            warn(
                f"{self.annotation_path}: {len(collided)} basenames are shared by different file_path values and "
                f"resolve to the same image (only basenames are used, as in RGBT-PEDE): {collided[:5]}"
                + (f"; {len(mixed)} of them carry different ids: {mixed[:5]}." if mixed else ".")
            )

    def records(self, split: str) -> list[ImageRecord]:
        """Pair records of ``train``, ``val`` or ``test``, in annotation order, unlabelled."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        return list(self._records[split])

    def train_split(self, holdout: str = "val", val_ids: int = 0, seed: int = 0) -> TrainSplit:
        """Training pairs, one caption sample per non-empty caption, and the validation trial.

        ``holdout="val"`` validates on the JSON's val split when it has one; otherwise ``val_ids`` training
        identities (0 = 10%, at least 2) chosen from ``seed`` are held out.
        """
        check_holdout(holdout)
        train = self.records("train")
        require_nonempty(train, f"{self.display_name} training split of {self.annotation_path}", "check the file.")
        val_pids: tuple[int, ...] = ()
        val_records: list[ImageRecord] = []
        val_source = None
        if holdout == "val":
            val_records = self.records("val")
            if val_records:
                val_source = "json"
            else:
                self._no_json_val()
                val_source = "held_out_ids"
                held = set(select_holdout_ids((r.pid for r in train), val_ids, seed, self.display_name))
                val_records = [r for r in train if r.pid in held]
                train = [r for r in train if r.pid not in held]
            val_pids = tuple(sorted({r.pid for r in val_records}))
        records, num_classes = assign_labels(train)
        return TrainSplit(
            dataset=self.name,
            records=records,
            num_classes=num_classes,
            val_trials=[],
            holdout=holdout,
            val_pids=val_pids,
            captions=caption_samples(records),
            meta={"val_source": val_source, "holdout_seed": seed if val_source == "held_out_ids" else None},
            val_records=tuple(val_records),
        )

    def _no_json_val(self) -> None:
        warn(
            f"{self.annotation_path} has no validation entries; training identities are held out for validation "
            f"instead (never the test split)."
        )


class RGBTPedes(_TextPairDataset):
    """RGBT-PEDES: ``<root>/RGBT-PEDES/{RGB,T}/<file>`` + ``caption_2_no_color.json`` (1,822 identities).

    Args:
        root: the folder that holds ``RGBT-PEDES/`` (or that folder itself).
        thermal_dir: ``T`` (current release), ``TGray`` (older code), or ``auto`` (``T`` if present).
        annotations: annotation file relative to ``RGBT-PEDES/`` (e.g. a same-schema subset such as
            ``challenge_json/low_light.json``) or an absolute path.
        strict_counts: make a mismatch with the published counts an error.
    """

    name = "rgbt_pedes"
    display_name = "RGBT-PEDES"
    layout_hint = "RGBT-PEDES/RGB/, RGBT-PEDES/T/ (or TGray/) and RGBT-PEDES/caption_2_no_color.json"

    def __init__(
        self,
        root: str | None,
        *,
        thermal_dir: str = "auto",
        annotations: str = DEFAULT_ANNOTATIONS,
        strict_counts: bool = False,
    ):
        super().__init__(root, annotations=annotations, strict_counts=strict_counts)
        if thermal_dir not in ("auto", *THERMAL_DIRS):
            raise ConfigError(f"RGBT-PEDES thermal_dir={thermal_dir!r} is not valid; use auto, T or TGray.")
        self.thermal_dir_option = thermal_dir

    @cached_property
    def synthetic(self) -> bool:
        """A ``vireid synth`` marker at the root or in the dataset folder below it."""
        return is_synthetic_root(self.root) or is_synthetic_root(self.data_dir)

    @cached_property
    def data_dir(self) -> str:
        nested = os.path.join(self.root, "RGBT-PEDES")
        if os.path.isdir(nested):
            return nested
        if os.path.isdir(os.path.join(self.root, "RGB")):
            return self.root
        raise DataError(f"RGBT-PEDES: {nested} is missing.", fix=f"pass the folder that contains {self.layout_hint}.")

    @cached_property
    def thermal_dir(self) -> str:
        """Name of the thermal image folder actually used (``T`` or ``TGray``)."""
        if self.thermal_dir_option != "auto":
            candidates: tuple[str, ...] = (self.thermal_dir_option,)
        else:
            candidates = THERMAL_DIRS
        for name in candidates:
            if os.path.isdir(os.path.join(self.data_dir, name)):
                return name
        raise DataError(
            f"RGBT-PEDES: no thermal folder {' or '.join(candidates)} in {self.data_dir}.",
            fix="extract the thermal images, or set thermal_dir to the folder name used by your copy.",
        )

    def _resolve(self, ann: CaptionAnnotation) -> tuple[str, str, int]:
        # Only the basename of file_path is used, as in RGBT-PEDE (collisions are reported).
        name = ann.file_path.rsplit("/", 1)[-1]
        return (
            os.path.join(self.data_dir, "RGB", name),
            os.path.join(self.data_dir, self.thermal_dir, name),
            0,
        )

    def _check_counts(self, annotations: list[CaptionAnnotation], records: dict[str, list[ImageRecord]]) -> None:
        if os.path.normpath(self.annotations) != DEFAULT_ANNOTATIONS:
            return  # a subset file: the published numbers describe the full annotation file only
        all_records = [r for recs in records.values() for r in recs]
        self.compare_counts(
            {
                "ids": len({r.pid for r in all_records}),
                "pairs": len(all_records),
                "captions": sum(bool(c) for r in all_records for c in r.captions),
            },
            (
                ExpectedCount("ids", 1822, True, "RGBT-PEDES README", "identities"),
                ExpectedCount("pairs", 4723, False, "secondary sources", "RGB-T pairs"),
                ExpectedCount("captions", 7987, False, "secondary sources", "captions"),
            ),
        )


class RGBNT201Pedes(_TextPairDataset):
    """RGBNT201-PEDES: RGBNT201 RGB/TI pairs with an RGBT-PEDES-schema caption JSON. ASSUMED layout.

    No public release exists (data spec 1.6). ``file_path`` is resolved as follows: if its folder part
    exists under the root (RGBNT201 nesting such as ``train_171/RGB/x.jpg``) that folder is used with the
    modality folder (``RGB``/``NI``/``TI``) substituted; otherwise ``<root>/<MOD>/<basename>``.

    Args:
        root: the folder that holds the JSON and the images.
        annotations: annotation file relative to the root (or an absolute path).
        use_nir: also require the NI image of every pair (available through :meth:`ni_path`).
        strict_counts: make a mismatch with the expected counts an error (they are assumptions, so
            mismatches only warn).
    """

    name = "rgbnt201_pedes"
    display_name = "RGBNT201-PEDES"
    layout_hint = "the caption JSON and RGB/, TI/ (and NI/) image folders, or RGBNT201 nesting"

    def __init__(
        self,
        root: str | None,
        *,
        annotations: str = DEFAULT_ANNOTATIONS,
        use_nir: bool = False,
        strict_counts: bool = False,
    ):
        super().__init__(root, annotations=annotations, strict_counts=strict_counts)
        self.use_nir = bool(use_nir)
        self._assumption_logged = False

    def _path_for(self, ann: CaptionAnnotation, modality_dir: str) -> str:
        parts = ann.file_path.strip("/").split("/")
        name, folder = parts[-1], parts[:-1]
        if folder and os.path.isdir(os.path.join(self.root, *folder)):
            swapped = list(folder)
            where = [i for i, part in enumerate(swapped) if part in ("RGB", "NI", "TI")]
            if where:
                swapped[where[-1]] = modality_dir
            else:
                swapped.append(modality_dir)
            return os.path.join(self.root, *swapped, name)
        return os.path.join(self.root, modality_dir, name)

    def _resolve(self, ann: CaptionAnnotation) -> tuple[str, str, int]:
        if not self._assumption_logged:
            logger.warning("RGBNT201-PEDES layout is an assumption (no public release; data spec 1.6).")
            self._assumption_logged = True
        name = ann.file_path.rsplit("/", 1)[-1]
        cam = _CAM.match(name)
        return self._path_for(ann, "RGB"), self._path_for(ann, "TI"), int(cam.group(1)) if cam else 0

    def ni_path(self, record: ImageRecord) -> str:
        """The near-infrared image of a pair record (``.../NI/<name>``)."""
        rgb_dir, name = os.path.split(record.path)
        return os.path.join(os.path.dirname(rgb_dir), "NI", name)

    def _check_counts(self, annotations: list[CaptionAnnotation], records: dict[str, list[ImageRecord]]) -> None:
        if self.use_nir:
            missing = [
                self.ni_path(r) for recs in records.values() for r in recs if not os.path.isfile(self.ni_path(r))
            ]
            if missing:
                raise DataError(
                    f"RGBNT201-PEDES: use_nir is set but {len(missing)} NI images are missing, e.g. {missing[:3]}.",
                    fix="extract the NI folders, or set use_nir=false.",
                )
        self.compare_counts(
            {"train_ids": len({r.pid for r in records["train"]}), "test_ids": len({r.pid for r in records["test"]})},
            (
                ExpectedCount("train_ids", 171, False, "assumed RGBNT201 split", "training identities"),
                ExpectedCount("test_ids", 30, False, "assumed RGBNT201 split", "test identities"),
            ),
        )

    def _no_json_val(self) -> None:
        logger.info("RGBNT201-PEDES: holding out training identities for validation (the JSON has no val split).")
