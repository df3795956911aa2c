"""Pre-resized, memory-mapped training image cache.

Why: decoding a JPEG and resizing it (Lanczos) costs far more than the augmentation that follows, and it
is the same work every epoch. The AGW/CAJ/DAKD releases therefore pre-pack resized images into ``.npy``
files, but only for SYSU and with hard-coded paths. vireid decodes and resizes every training image once,
with the same :func:`~vireid.data.transforms.presets.pre_resize` the uncached path uses, and stores the
result in one ``np.memmap`` uint8 array of shape (N, H, W, 3) per record list (one per modality for
VI-ReID). Augmentation then starts from exactly the same pixels, so cached and uncached training are
identical (tested), and only the resize target H x W of the network input is stored: pad/crop/flip run
after it, as in the releases.

Files in ``cache_dir`` (``<key>`` names the size, filter and a hash of the path list):

- ``<key>.json``: the index: format version, size, filter, gray3 flag, data file name, and for every image
  its path, byte size and mtime (ns). The cache is rebuilt when any of them changed.
- ``<key>.<token>.u8``: the raw array; ``token`` is unique per build, so a reader never sees a half-written
  or mismatched array.

Writes are atomic: the array is written to a temporary file and renamed, then the index is written to a
temporary file and renamed (the index is the commit point), then the previous build's array is removed.
Corrupt images raise :class:`~vireid.errors.DataError` naming the file, as in uncached decoding. Under DDP,
build the cache on rank 0 before the other ranks open it (concurrent builds are safe but duplicate work).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vireid.data.image_io import load_image
from vireid.data.records import ImageRecord, Modality
from vireid.data.transforms.presets import pre_resize
from vireid.errors import DataError, describe_os_error

CACHE_FORMAT = "vireid-image-cache"
CACHE_VERSION = 1


def _stat(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DataError(
            f"image {path} does not exist.", fix="check the dataset root and that the download is complete."
        ) from None
    except OSError as exc:  # a symbolic-link loop, a permission problem, an I/O error
        raise describe_os_error(exc, path, cls=DataError) from None
    return st.st_size, st.st_mtime_ns


def decode_resized(path: str, height: int, width: int, interpolation: str, gray3: bool = False) -> Image.Image:
    """Decode ``path`` (always RGB) and pre-resize it to ``width x height``: the uncached training input."""
    return pre_resize(load_image(path, gray3=gray3), height, width, interpolation)


class ImageCache:
    """Read access to one cached record list: ``cache[i]`` is image ``i`` as a (H, W, 3) uint8 array.

    Picklable for DataLoader workers: the memory map is dropped when pickled and reopened lazily in the
    worker, so no image data crosses the process boundary.
    """

    def __init__(self, index_path: Path, data_path: Path | None, paths: list[str], height: int, width: int):
        self.index_path = Path(index_path)
        self.data_path = Path(data_path) if data_path is not None else None
        self.paths = paths
        self.height, self.width = height, width
        self._array: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def array(self) -> np.ndarray:
        """The (N, H, W, 3) uint8 array (memory-mapped, read-only)."""
        if self._array is None:
            shape = (len(self.paths), self.height, self.width, 3)
            if self.data_path is None:
                self._array = np.zeros(shape, dtype=np.uint8)
            else:
                self._array = np.memmap(self.data_path, dtype=np.uint8, mode="r", shape=shape)
        return self._array

    def __getitem__(self, index: int) -> np.ndarray:
        return np.array(self.array[index])

    def image(self, index: int) -> Image.Image:
        """Image ``index`` as an RGB ``PIL.Image`` (what the view pipelines take)."""
        return Image.fromarray(self[index])

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_array"] = None
        return state


def _cache_key(paths: Sequence[str], name: str, height: int, width: int, interpolation: str, gray3: bool) -> str:
    # surrogateescape: file names that are not valid UTF-8 reach Python as lone surrogates (PEP 383); they
    # are hashed as their original bytes instead of failing.
    digest = hashlib.sha1("\n".join(paths).encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return f"{name}-{height}x{width}-{interpolation}{'-gray3' if gray3 else ''}-{digest}"


def _read_valid_index(index_path: Path, expected: dict, stats: list[tuple[int, int]]) -> dict | None:
    """The index if it exists and matches the expected header and every file's size/mtime, else None."""
    try:
        index = json.loads(index_path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(index, dict) or any(index.get(k) != v for k, v in expected.items()):
        return None
    files = index.get("files")
    if not isinstance(files, list) or len(files) != len(stats):
        return None
    if any(list(entry[1:]) != list(stat) for entry, stat in zip(files, stats)):
        return None
    if expected["count"]:
        data = index_path.parent / str(index.get("data_file"))
        size = expected["count"] * expected["height"] * expected["width"] * 3
        if not data.is_file() or data.stat().st_size != size:
            return None
    return index


def build_image_cache(
    paths: Sequence[str],
    cache_dir: str | Path,
    height: int,
    width: int,
    *,
    interpolation: str = "lanczos",
    gray3: bool = False,
    name: str = "train",
    workers: int = 4,
) -> ImageCache:
    """Open the cache of ``paths`` at ``height x width`` in ``cache_dir``, (re)building it when stale.

    Args:
        paths: image files in dataset order (cache index i = ``paths[i]``).
        cache_dir: folder for the index and array (created if missing).
        height, width: stored size (the network input size; see the module docstring).
        interpolation: pre-resize filter (must match the training views' ``interpolation``).
        gray3: decode as grayscale replicated to 3 channels (thermal images of RGBT-PEDES).
        name: file-name prefix (e.g. ``train-vis``).
        workers: decoding threads while building (PIL releases the GIL while decoding and resizing).

    Raises:
        DataError: an image is missing or corrupt (the message names the file).
    """
    paths = [str(p) for p in paths]
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = _cache_key(paths, name, height, width, interpolation, gray3)
    index_path = cache_dir / f"{key}.json"
    stats = [_stat(p) for p in paths]
    header = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "height": height,
        "width": width,
        "interpolation": interpolation,
        "gray3": gray3,
        "count": len(paths),
    }
    index = _read_valid_index(index_path, header, stats)
    if index is None:
        index = _build(paths, stats, cache_dir, key, header, workers)
    data_path = cache_dir / index["data_file"] if paths else None
    return ImageCache(index_path, data_path, paths, height, width)


def _build(
    paths: list[str], stats: list[tuple[int, int]], cache_dir: Path, key: str, header: dict, workers: int
) -> dict:
    height, width = header["height"], header["width"]
    old_data = None
    with contextlib.suppress(FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        old_data = json.loads((cache_dir / f"{key}.json").read_text()).get("data_file")
    data_name = f"{key}.{uuid.uuid4().hex[:8]}.u8"
    if paths:
        tmp = cache_dir / f"{data_name}.tmp"
        try:
            array = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=(len(paths), height, width, 3))

            def fill(i: int) -> None:
                img = decode_resized(paths[i], height, width, header["interpolation"], header["gray3"])
                array[i] = np.asarray(img, dtype=np.uint8)

            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                for _ in pool.map(fill, range(len(paths))):
                    pass
            array.flush()
            del array
            os.replace(tmp, cache_dir / data_name)
        finally:
            tmp.unlink(missing_ok=True)
    index = {**header, "data_file": data_name, "files": [[p, *s] for p, s in zip(paths, stats)]}
    tmp_index = cache_dir / f"{key}.json.{uuid.uuid4().hex[:8]}.tmp"
    tmp_index.write_text(json.dumps(index))
    os.replace(tmp_index, cache_dir / f"{key}.json")
    if old_data and old_data != data_name:
        (cache_dir / old_data).unlink(missing_ok=True)
    return index


@dataclass
class CrossModalCache:
    """The caches of the visible and infrared training images of one record list (dataset index order)."""

    visible: ImageCache
    infrared: ImageCache


def build_cross_modal_cache(
    records: Sequence[ImageRecord],
    cache_dir: str | Path,
    height: int,
    width: int,
    *,
    interpolation: str = "lanczos",
    gray3_infrared: bool = False,
    workers: int = 4,
) -> CrossModalCache:
    """Cache the visible and infrared images of ``records`` (in record order) for a training dataset."""
    vis = [r.path for r in records if r.modality == Modality.VISIBLE]
    ir = [r.path for r in records if r.modality == Modality.INFRARED]
    common = {"interpolation": interpolation, "workers": workers}
    return CrossModalCache(
        visible=build_image_cache(vis, cache_dir, height, width, name="train-vis", **common),
        infrared=build_image_cache(ir, cache_dir, height, width, gray3=gray3_infrared, name="train-ir", **common),
    )
