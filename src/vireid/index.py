"""Gallery index files: features of a folder of images, their paths and identities, and the model that made them.

An index is a folder (by convention named ``*.vidx``) holding plain, safe-to-load files, never a pickle::

    features.safetensors   one float32 tensor "features" of shape (N, D), rows L2-normalised
    index.json             format/version, modality, N and D, image root, relative paths (and thermal pair
                           paths for RGB+T galleries), identities if known and where they came from, and a
                           reference to the checkpoint: its path, method, task and the SHA-256 of its weights
    ivf.faiss              optional: a faiss IVF index over the same rows (``vireid index --ivf NLIST``)

``features.safetensors`` follows the safetensors format exactly (``safetensors.torch.load_file`` reads it),
but vireid writes it row block by row block and reads it through a memory map, so building and searching
an index never needs the whole matrix in memory. The weights' SHA-256 lets ``vireid search`` refuse to mix
query features from one model with gallery features from another.

Identities (used to colour rank lists green/red and nothing else) come from a ``--labels`` file
(``<relative path> <identity>`` per line), or are read from the layout when every image has one: the nearest
all-digit folder above the image (SYSU-MM01 ``cam3/0007/0001.jpg``, RegDB ``Thermal/12/x.bmp``, LLCM
``test_nir/cam2/0043/...``), or else a leading ``<digits>_`` in the file name (RGBNT201 ``000201_cam1_...``,
Market-1501 style).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vireid.data.readers.layout import IMAGE_SUFFIXES
from vireid.errors import CheckpointError, ConfigError, DataError, StorageError
from vireid.files import (
    check_replaceable,
    clean_orphaned_temp_folders,
    discard_temp_folder,
    folder_kind,
    make_temp_folder,
    mark_folder,
    replace_folder,
    storage_error,
)

INDEX_FORMAT = "vireid-index"
INDEX_VERSION = 1
FEATURES_FILE = "features.safetensors"
META_FILE = "index.json"
IVF_FILE = "ivf.faiss"
FEATURES_KEY = "features"

PAIR_RGB_DIRS = ("RGB", "rgb", "visible", "vis")
"""Sub-folders that hold the RGB half of an RGB+T pair gallery (RGBT-PEDES and RGBNT201 use ``RGB``)."""
PAIR_THERMAL_DIRS = ("T", "TI", "TGray", "thermal", "infrared", "ir", "tir")
"""Sub-folders that hold the thermal half (RGBT-PEDES ``T``/``TGray``, RGBNT201 ``TI``)."""

_NAME_ID = re.compile(r"^(\d+)_")


# ------------------------------------------------------------------------------------------------ metadata


@dataclass(frozen=True)
class CheckpointRef:
    """Which model produced an index's features."""

    path: str
    method: str
    task: str
    dataset: str | None
    global_step: int | None
    weights_sha256: str


@dataclass
class IndexMeta:
    """Everything in ``index.json`` (see the module docstring)."""

    modality: str
    num_items: int
    dim: int
    root: str
    checkpoint: CheckpointRef
    paths: list[str]
    pair_paths: list[str] | None = None
    pids: list[int] | None = None
    identity_source: str | None = None
    """``labels:<file>``, ``folder`` or ``filename`` (see the module docstring), or ``None``."""
    created: str = ""
    vireid_version: str = ""
    format: str = INDEX_FORMAT
    version: int = INDEX_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: Path) -> IndexMeta:
        if data.get("format") != INDEX_FORMAT:
            raise DataError(f"{where} is not a vireid index file (format {data.get('format')!r}).")
        if int(data.get("version", 0)) > INDEX_VERSION:
            raise DataError(
                f"{where} has index format version {data['version']}; this vireid reads up to {INDEX_VERSION}.",
                fix="upgrade vireid or rebuild the index with this version.",
            )
        try:
            data = dict(data)
            data["checkpoint"] = CheckpointRef(**data["checkpoint"])
            return cls(**data)
        except (TypeError, KeyError) as exc:
            raise DataError(
                f"{where} is incomplete or malformed ({exc}).", fix="rebuild it with `vireid index`."
            ) from None


def weights_fingerprint(checkpoint_folder: str | os.PathLike) -> str:
    """SHA-256 of a checkpoint's tensors: every name, dtype, shape and the raw bytes, in sorted name order.

    It identifies the weights whatever the folder is called and however the file was written: hashing the
    file's bytes instead would also hash the order of the safetensors JSON header, which older writers
    changed from process to process, so that the same weights saved twice looked like different models.
    """
    from safetensors import SafetensorError, safe_open

    from vireid.engine.checkpoint import MODEL_FILE

    path = Path(checkpoint_folder) / MODEL_FILE
    digest = hashlib.sha256(b"vireid-weights-v1")
    try:
        with safe_open(str(path), framework="pt") as handle:
            for name in sorted(handle.keys()):
                tensor = handle.get_tensor(name).contiguous()
                digest.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode())
                digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(
            f"checkpoint weights {path} are unreadable ({exc}).", fix="restore the file or pass another checkpoint."
        ) from None
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes: the weights fingerprint of indexes written before tensor fingerprints."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------- streamed feature files


class FeatureFileWriter:
    """Write an (N, D) float32 matrix into a safetensors file in row blocks (bounded memory).

    The safetensors layout is: an 8-byte little-endian header length, a JSON header (padded with spaces to a
    multiple of 8 bytes) giving dtype, shape and byte offsets, then the raw little-endian data. N and D are
    known before extraction starts (N from the file listing, D from the first batch), so the header is
    written first and the rows are appended as they come.
    """

    def __init__(self, path: str | os.PathLike, num_rows: int, dim: int, metadata: dict[str, str] | None = None):
        self.path = Path(path)
        self.num_rows, self.dim = int(num_rows), int(dim)
        header: dict[str, Any] = {
            FEATURES_KEY: {"dtype": "F32", "shape": [self.num_rows, self.dim], "data_offsets": [0, self._nbytes()]}
        }
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self._handle = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._handle.write(struct.pack("<Q", len(raw)))
        self._handle.write(raw)
        self.rows_written = 0

    def _nbytes(self) -> int:
        return self.num_rows * self.dim * 4

    def write(self, rows: torch.Tensor | np.ndarray) -> None:
        """Append (b, D) rows."""
        array = rows.detach().cpu().numpy() if isinstance(rows, torch.Tensor) else np.asarray(rows)
        array = np.ascontiguousarray(array, dtype="<f4")
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise ValueError(f"rows of shape {array.shape} do not fit a ({self.num_rows}, {self.dim}) feature file")
        if self.rows_written + array.shape[0] > self.num_rows:
            raise ValueError(f"more than {self.num_rows} rows written to {self.path}")
        self._handle.write(array.tobytes())
        self.rows_written += array.shape[0]

    def close(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        if self.rows_written != self.num_rows:
            raise ValueError(f"{self.path}: {self.rows_written} rows written, {self.num_rows} declared")

    def abort(self) -> None:
        """Close the file without the completeness check (the caller discards it)."""
        self._handle.close()

    def __enter__(self) -> FeatureFileWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def open_feature_file(path: str | os.PathLike) -> np.ndarray:
    """Memory-map the (N, D) float32 ``features`` tensor of a safetensors file (copy-on-write: writes never
    reach the file; nothing is read until used)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            (header_len,) = struct.unpack("<Q", handle.read(8))
            if header_len > min(size, 100 << 20):
                raise ValueError("header length exceeds the file")
            header = json.loads(handle.read(header_len))
        entry = header[FEATURES_KEY]
        rows, dim = (int(v) for v in entry["shape"])
        start, end = (int(v) for v in entry["data_offsets"])
        if entry["dtype"] != "F32" or end - start != rows * dim * 4 or 8 + header_len + end > size:
            raise ValueError(f"unexpected tensor entry {entry}")
    except (OSError, ValueError, KeyError, struct.error) as exc:
        raise DataError(
            f"{path} is not a readable vireid feature file ({exc}).", fix="rebuild the index with `vireid index`."
        ) from None
    if rows == 0:
        return np.zeros((0, dim), dtype=np.float32)
    return np.memmap(path, dtype="<f4", mode="c", offset=8 + header_len + start, shape=(rows, dim))


# ------------------------------------------------------------------------------------------------ the index


class GalleryIndex:
    """An opened index: metadata in memory, features memory-mapped.

    Use :meth:`open` to read one and :func:`build_index` to write one; :meth:`search` ranks the gallery for
    query features (see :mod:`vireid.search`).
    """

    def __init__(self, folder: Path, meta: IndexMeta):
        self.folder = folder
        self.meta = meta
        self._features: np.ndarray | None = None
        self._loaded: dict[str, torch.Tensor] = {}
        self.faiss_cache: dict[str, Any] = {}
        """faiss indexes built or read by :func:`vireid.ranking.search_index`, keyed by backend."""

    @classmethod
    def open(cls, folder: str | os.PathLike) -> GalleryIndex:
        """Open an index folder written by :func:`build_index`; :class:`DataError` names what is wrong."""
        folder = Path(folder)
        meta_path = folder / META_FILE
        if not folder.exists():
            raise DataError(
                f"index {folder} does not exist.", fix="build it with `vireid index CHECKPOINT --images DIR -o FILE`."
            )
        if not meta_path.is_file() or not (folder / FEATURES_FILE).is_file():
            raise DataError(
                f"{folder} is not a vireid index (it needs {META_FILE} and {FEATURES_FILE}).",
                fix="pass the folder written by `vireid index`.",
            )
        try:
            data = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{meta_path} is unreadable ({exc}).", fix="rebuild the index.") from None
        meta = IndexMeta.from_dict(data, meta_path)
        index = cls(folder, meta)
        feats = index.features
        if feats.shape != (meta.num_items, meta.dim) or len(meta.paths) != meta.num_items:
            raise DataError(
                f"{folder}: {FEATURES_FILE} holds {tuple(feats.shape)} features but {META_FILE} lists "
                f"{len(meta.paths)} images of dimension {meta.dim}; the index is inconsistent.",
                fix="rebuild it with `vireid index`.",
            )
        return index

    def __len__(self) -> int:
        return self.meta.num_items

    @property
    def features(self) -> np.ndarray:
        """(N, D) float32, memory-mapped (copy-on-write; the file is never modified)."""
        if self._features is None:
            self._features = open_feature_file(self.folder / FEATURES_FILE)
        return self._features

    def features_tensor(self, device: str | torch.device = "cpu") -> torch.Tensor:
        """All features as one tensor on ``device`` (loaded once and kept; use for repeated searches)."""
        key = str(device)
        if key not in self._loaded:
            self._loaded[key] = torch.from_numpy(np.array(self.features)).to(device)
        return self._loaded[key]

    @property
    def modality(self) -> str:
        return self.meta.modality

    @property
    def has_identities(self) -> bool:
        return self.meta.pids is not None

    def absolute_path(self, i: int) -> Path:
        return Path(self.meta.root) / self.meta.paths[i]

    def absolute_pair_path(self, i: int) -> Path | None:
        if self.meta.pair_paths is None:
            return None
        return Path(self.meta.root) / self.meta.pair_paths[i]

    @property
    def ivf_path(self) -> Path:
        return self.folder / IVF_FILE

    def search(self, queries: torch.Tensor, k: int = 10, **options):
        """Rank the gallery for (Q, D) normalised ``queries``; see :func:`vireid.ranking.search_index`."""
        from vireid.ranking import search_index

        return search_index(self, queries, k, **options)


# ----------------------------------------------------------------------------------------- image listing


def list_images(folder: str | os.PathLike) -> list[str]:
    """Relative POSIX paths of every image under ``folder`` (recursive, sorted; hidden entries skipped)."""
    folder = Path(folder)
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(folder)
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES):
                found.append((rel_dir / name).as_posix())
    return sorted(found)


def list_pairs(folder: str | os.PathLike) -> tuple[list[str], list[str]]:
    """(RGB paths, thermal paths) of an RGB+T gallery: ``folder/<RGB dir>/x`` pairs with ``folder/<T dir>/x``.

    The RGB and thermal sub-folder names are those of :data:`PAIR_RGB_DIRS` and :data:`PAIR_THERMAL_DIRS`.
    Every RGB image must have its thermal partner under the same relative path.
    """
    folder = Path(folder)
    rgb_dir = next((d for d in PAIR_RGB_DIRS if (folder / d).is_dir()), None)
    thermal_dir = next((d for d in PAIR_THERMAL_DIRS if (folder / d).is_dir()), None)
    if rgb_dir is None or thermal_dir is None:
        raise DataError(
            f"{folder} is not an RGB+thermal pair folder: it needs an RGB sub-folder ({'/'.join(PAIR_RGB_DIRS)}) "
            f"and a thermal sub-folder ({'/'.join(PAIR_THERMAL_DIRS)}) holding images with the same names.",
            fix="arrange the gallery as DIR/RGB/<name> + DIR/T/<name> (the RGBT-PEDES layout).",
        )
    rgb = list_images(folder / rgb_dir)
    missing = [p for p in rgb if not (folder / thermal_dir / p).is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} RGB images under {folder / rgb_dir} have no thermal partner in {folder / thermal_dir}, "
            f"e.g. {missing[:3]}.",
            fix="every RGB image needs the thermal image of the same name.",
        )
    return [f"{rgb_dir}/{p}" for p in rgb], [f"{thermal_dir}/{p}" for p in rgb]


def identity_from_folder(rel_path: str) -> int | None:
    """The nearest all-digit folder above an image (``cam3/0007/0001.jpg`` -> 7), or ``None``."""
    for part in reversed(Path(rel_path).parts[:-1]):
        if part.isdigit():
            return int(part)
    return None


def identity_from_name(rel_path: str) -> int | None:
    """A leading ``<digits>_`` in the file name (``000201_cam1_0_00.jpg`` -> 201), or ``None``."""
    match = _NAME_ID.match(Path(rel_path).name)
    return int(match.group(1)) if match else None


def identities_from_layout(rel_paths: Sequence[str]) -> tuple[list[int] | None, str | None]:
    """Identities read from the layout if *every* image has one by the same rule, else ``(None, None)``."""
    for source, rule in (("folder", identity_from_folder), ("filename", identity_from_name)):
        pids = [rule(p) for p in rel_paths]
        if rel_paths and all(pid is not None for pid in pids):
            return [int(pid) for pid in pids], source  # type: ignore[arg-type]
    return None, None


def identity_of_query(path: str | os.PathLike, source: str | None) -> int | None:
    """The identity of a query image by the rule that labelled the gallery (the image's own folder name, or
    its file-name prefix); ``None`` when the gallery was labelled from a file or not at all."""
    path = Path(path)
    if source == "folder":
        return int(path.parent.name) if path.parent.name.isdigit() else None
    if source == "filename":
        return identity_from_name(path.name)
    return None


def read_labels_file(labels: str | os.PathLike, rel_paths: Sequence[str]) -> list[int]:
    """Identities of ``rel_paths`` from a ``<relative path> <identity>`` file; every image must be listed once."""
    from vireid.data.readers.index_files import read_labelled_list

    labels = Path(labels)
    if not labels.is_file():
        raise DataError(
            f"labels file {labels} does not exist.", fix="pass a file of '<relative path> <identity>' lines."
        )
    table: dict[str, int] = {}
    for entry in read_labelled_list(str(labels)):
        key = entry.path[2:] if entry.path.startswith("./") else entry.path
        if key in table:
            raise DataError(f"{labels}, line {entry.line}: {key} is listed twice.")
        table[key] = entry.label
    unknown = sorted(set(table) - set(rel_paths))
    if unknown:
        raise DataError(
            f"{labels} lists {len(unknown)} images that are not in the gallery folder, e.g. {unknown[:3]}.",
            fix="paths must be relative to the --images folder, with '/' separators.",
        )
    missing = [p for p in rel_paths if p not in table]
    if missing:
        raise DataError(
            f"{labels} gives no identity for {len(missing)} gallery images, e.g. {missing[:3]}.",
            fix="add a '<relative path> <identity>' line for every image (or leave out --labels).",
        )
    return [table[p] for p in rel_paths]


# ------------------------------------------------------------------------------------------------ building


def build_index(
    checkpoint,
    images: str | os.PathLike,
    output: str | os.PathLike,
    *,
    modality: str = "visible",
    labels: str | os.PathLike | None = None,
    identities: str = "auto",
    batch_size: int = 64,
    workers: int = 0,
    device: str | None = None,
    ivf_lists: int = 0,
    progress: bool = False,
    amp: str = "none",
) -> GalleryIndex:
    """Extract features of every image under ``images`` and write an index folder to ``output``.

    Args:
        checkpoint: checkpoint/run folder, or a :class:`vireid.inference.FeatureExtractor` to reuse.
        images: gallery folder, listed recursively. For ``modality="pair"`` (text checkpoints) it holds an RGB
            and a thermal sub-folder (:func:`list_pairs`).
        output: index folder to write (``gallery.vidx``). An existing index there is replaced atomically;
            any other existing file or folder is refused.
        modality: ``visible``, ``infrared`` or ``pair``.
        labels: optional ``<relative path> <identity>`` file; else ``identities`` decides.
        identities: ``auto`` (read from the layout when every image has one) or ``none``.
        batch_size, workers, device: extraction settings.
        amp: extraction precision, ``none`` (default: fp32, as ``vireid test`` scores) or, on the GPU,
            ``auto``/``bf16``/``fp16`` (see :class:`vireid.inference.FeatureExtractor`).
        ivf_lists: also build a faiss IVF index with this many lists (0 = none; needs the faiss extra).
        progress: show a progress bar.

    Memory stays bounded by one batch: features are streamed into the feature file.
    """
    from vireid import __version__
    from vireid.inference import FeatureExtractor, parse_modality

    if identities not in ("auto", "none"):
        raise ConfigError(f"identities={identities!r} is not 'auto' or 'none'.")
    images = Path(images).expanduser().resolve()
    if not images.is_dir():
        raise DataError(f"gallery folder {images} does not exist or is not a folder.", fix="pass --images DIR.")
    output = Path(output).expanduser()
    # Only a folder that vireid created as an index (its mark) and that holds nothing else is ever replaced;
    # a user's folder that merely contains a file named index.json is refused.
    _check_output(output)
    extractor = checkpoint if isinstance(checkpoint, FeatureExtractor) else None
    if extractor is None:
        extractor = FeatureExtractor(checkpoint, device=device, batch_size=batch_size, amp=amp)
    name = parse_modality(modality, task=extractor.task)
    if name == "text":
        raise ConfigError("an index holds images; modality='text' is for queries.", fix="index with modality='pair'.")
    if name == "pair":
        paths, pair_paths = list_pairs(images)
    else:
        paths, pair_paths = list_images(images), None
    if not paths:
        raise DataError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) were found under {images}.", fix="check the --images folder."
        )
    if labels is not None:
        pids, source = read_labels_file(labels, paths), f"labels:{Path(labels).resolve()}"
    elif identities == "auto":
        pids, source = identities_from_layout(paths)
    else:
        pids, source = None, None

    if name == "pair":
        batches = extractor.iter_pair_paths(
            [(images / a, images / b) for a, b in zip(paths, pair_paths or [])], workers=workers
        )
    else:
        batches = extractor.iter_paths([images / p for p in paths], name, workers=workers)
    if progress:
        from rich.progress import track

        total = (len(paths) + extractor.batch_size - 1) // extractor.batch_size
        batches = track(batches, total=total, description=f"indexing {len(paths)} images")

    clean_orphaned_temp_folders(output.parent, target_name=output.name)
    tmp = make_temp_folder(output, "index")
    writer: FeatureFileWriter | None = None
    try:
        mark_folder(tmp, "index")
        for feats in batches:
            if writer is None:
                meta_tags = {"format": INDEX_FORMAT, "vireid": __version__}
                writer = FeatureFileWriter(tmp / FEATURES_FILE, len(paths), feats.shape[1], meta_tags)
            writer.write(feats)
        assert writer is not None
        writer.close()
        lm = extractor.loaded
        meta = IndexMeta(
            modality=name,
            num_items=len(paths),
            dim=writer.dim,
            root=str(images),
            checkpoint=CheckpointRef(
                path=str(lm.path.resolve()),
                method=str(lm.meta.get("method")),
                task=extractor.task,
                dataset=lm.meta.get("dataset"),
                global_step=lm.meta.get("global_step"),
                weights_sha256=weights_fingerprint(lm.path),
            ),
            paths=paths,
            pair_paths=pair_paths,
            pids=pids,
            identity_source=source,
            created=_dt.datetime.now().isoformat(timespec="seconds"),
            vireid_version=__version__,
            extra={"flip": extractor.flip, "input_size": list(extractor.input_size)},
        )
        (tmp / META_FILE).write_text(meta.to_json())
        if ivf_lists > 0:
            from vireid.ranking import build_ivf, save_ivf

            save_ivf(build_ivf(open_feature_file(tmp / FEATURES_FILE), ivf_lists), tmp / IVF_FILE)
        _check_output(output)
        replace_folder(tmp, output)
    except OSError as exc:
        if writer is not None:
            writer.abort()
        discard_temp_folder(tmp)
        if isinstance(exc, StorageError):
            raise
        raise storage_error(exc, output, "write the index") from None
    except BaseException:
        if writer is not None:
            writer.abort()
        discard_temp_folder(tmp)
        raise
    return GalleryIndex.open(output)


_INDEX_ENTRIES = {FEATURES_FILE, META_FILE, IVF_FILE}


def _check_output(output: Path) -> None:
    """Refuse ``-o`` unless it is absent or an index vireid wrote (see :func:`vireid.files.check_replaceable`).

    Indexes written before folders were marked are recognised by their content: nothing but index files,
    and an ``index.json`` of vireid's format.
    """
    if output.is_dir() and folder_kind(output) is None and _unmarked_vireid_index(output):
        return
    check_replaceable(output, "index", _INDEX_ENTRIES, "index", fix="choose another -o path.")


def _unmarked_vireid_index(folder: Path) -> bool:
    names = {p.name for p in folder.iterdir()}
    if META_FILE not in names or not names <= _INDEX_ENTRIES:
        return False
    try:
        return json.loads((folder / META_FILE).read_text()).get("format") == INDEX_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_checkpoint_matches(index: GalleryIndex, checkpoint_folder: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` unless ``checkpoint_folder`` holds the weights that built ``index``."""
    found = weights_fingerprint(checkpoint_folder)
    stored = index.meta.checkpoint.weights_sha256
    legacy = found != stored and _file_sha256(Path(checkpoint_folder) / "model.safetensors") == stored
    if found != stored and not legacy:
        raise CheckpointError(
            f"the checkpoint {checkpoint_folder} is not the model that built the index {index.folder} "
            f"(weights SHA-256 {found[:12]}... vs {index.meta.checkpoint.weights_sha256[:12]}...); query and "
            "gallery features of different models cannot be compared.",
            fix=f"pass the checkpoint the index was built with ({index.meta.checkpoint.path}) or rebuild the index.",
        )
