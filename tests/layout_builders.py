"""Builders of tiny dataset trees in the official layouts, for reader and protocol tests.

Images are 8x4 pixels (contents do not matter to readers and protocols); each builder returns a small
description of what it wrote so that tests can compute expected values independently. Other test modules
may import these functions (``from layout_builders import build_sysu``).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image


@cache
def _image_bytes(fmt: str, mode: str) -> bytes:
    img = Image.new(mode, (4, 8), color=128 if mode in ("L", "P") else (120, 60, 30))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def write_image(path: str | Path, mode: str = "RGB") -> Path:
    """Write a tiny image whose format follows the suffix (.jpg/.jpeg, .bmp, .png); ``mode`` RGB, L or P."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".png": "PNG"}[path.suffix.lower()]
    if fmt == "JPEG" and mode == "P":
        mode = "L"
    path.write_bytes(_image_bytes(fmt, mode))
    return path


# ------------------------------------------------------------------------------------------------ SYSU-MM01

SYSU_IR_CAMS = (3, 6)


def build_sysu(
    root: str | Path,
    folders: Mapping[tuple[int, int], int],
    train_ids: Sequence[int],
    val_ids: Sequence[int],
    test_ids: Sequence[int],
    *,
    id_file_suffix: str = "\n",
) -> Path:
    """Write ``cam{1..6}/<pid:04d>/<k:04d>.jpg`` (``folders[(cam, pid)]`` images each, k = 1..n) and exp/ files.

    Every camera folder is created even if empty. ``id_file_suffix`` ends the id lines (e.g. ``"\\r\\n"``).
    """
    root = Path(root)
    for cam in range(1, 7):
        (root / f"cam{cam}").mkdir(parents=True, exist_ok=True)
    for (cam, pid), n in folders.items():
        for k in range(1, n + 1):
            write_image(root / f"cam{cam}" / f"{pid:04d}" / f"{k:04d}.jpg", mode="L" if cam in SYSU_IR_CAMS else "RGB")
    exp = root / "exp"
    exp.mkdir(exist_ok=True)
    for name, ids in (("train", train_ids), ("val", val_ids), ("test", test_ids)):
        (exp / f"{name}_id.txt").write_bytes((",".join(str(i) for i in ids) + id_file_suffix).encode())
    return root


def default_sysu_folders(
    train_ids: Iterable[int] = (1, 2, 3, 4),
    val_ids: Iterable[int] = (5, 6),
    test_ids: Iterable[int] = (7, 8, 9, 10, 11),
    *,
    multi_shot: bool = True,
) -> dict[tuple[int, int], int]:
    """A varied folder table: uneven image counts and a few absent (identity, camera) folders.

    Test gallery folders hold >= 10 images when ``multi_shot`` so that 10-shot sampling is possible.
    """
    folders: dict[tuple[int, int], int] = {}
    rng = np.random.default_rng(7)
    for pid in [*train_ids, *val_ids]:
        for cam in range(1, 7):
            if (pid + cam) % 5 == 0 and cam not in (1, 3):
                continue  # absent folder
            folders[(cam, pid)] = int(rng.integers(2, 6))
    for pid in test_ids:
        for cam in range(1, 7):
            if (pid * cam) % 7 == 3 and cam not in (1, 3):
                continue
            low = 10 if multi_shot and cam not in SYSU_IR_CAMS else 2
            folders[(cam, pid)] = int(rng.integers(low, low + 5))
    return folders


def write_rand_perm(root: str | Path, perms: Mapping[tuple[int, int], np.ndarray], num_pids: int) -> Path:
    """Write ``exp/rand_perm_cam.mat`` shaped like the official file (6x1 cell of 1 x num_pids cells)."""
    from scipy.io import savemat

    cells = np.empty((6, 1), dtype=object)
    for cam in range(1, 7):
        inner = np.empty((1, num_pids), dtype=object)
        for pid in range(1, num_pids + 1):
            matrix = perms.get((cam, pid))
            inner[0, pid - 1] = np.zeros((0, 0)) if matrix is None else np.asarray(matrix, dtype=np.float64)
        cells[cam - 1, 0] = inner
    path = Path(root) / "exp" / "rand_perm_cam.mat"
    savemat(path, {"rand_perm_cam": cells})
    return path


# ------------------------------------------------------------------------------------------------ RegDB


def regdb_name(modality: str, folder: int, k: int) -> str:
    letter = "v" if modality == "Visible" else "t"
    return f"male_front_{letter}_{folder * 100 + k:05d}_{k}.bmp"


def build_regdb(
    root: str | Path,
    *,
    num_ids: int = 8,
    images_per_id: int = 3,
    trials: Sequence[int] = (1,),
    line_end: str = "\n",
    trailing: str = "",
) -> dict[int, dict[str, list[tuple[str, int]]]]:
    """Write ``{Visible,Thermal}/<id>/*.bmp`` (thermal grayscale) and ``idx/`` files for ``trials``.

    Trial t trains on the folders ``[1 + (t-1) % 2 :: 2]`` of 1..num_ids, tests on the rest; labels are
    0-based per split, in folder order. Returns ``{trial: {"train_visible": [(relpath, label)], ...}}``.
    """
    root = Path(root)
    for folder in range(1, num_ids + 1):
        for k in range(images_per_id):
            write_image(root / "Visible" / str(folder) / regdb_name("Visible", folder, k), mode="RGB")
            write_image(root / "Thermal" / str(folder) / regdb_name("Thermal", folder, k), mode="L")
    (root / "idx").mkdir(exist_ok=True)
    out: dict[int, dict[str, list[tuple[str, int]]]] = {}
    for t in trials:
        folders = list(range(1, num_ids + 1))
        train = folders[(t - 1) % 2 :: 2]
        test = [f for f in folders if f not in train]
        lists: dict[str, list[tuple[str, int]]] = {}
        for split, ids in (("train", train), ("test", test)):
            for mod, top in (("visible", "Visible"), ("thermal", "Thermal")):
                entries = [
                    (f"{top}/{folder}/{regdb_name(top, folder, k)}", label)
                    for label, folder in enumerate(ids)
                    for k in range(images_per_id)
                ]
                lists[f"{split}_{mod}"] = entries
                text = "".join(f"{p} {lab}{trailing}{line_end}" for p, lab in entries)
                (root / "idx" / f"{split}_{mod}_{t}.txt").write_bytes(text.encode())
        out[t] = lists
    return out


# ------------------------------------------------------------------------------------------------ LLCM

LLCM_VIS_CAMS = tuple(range(1, 10))
LLCM_NIR_CAMS = (1, 2, 4, 5, 6, 7, 8, 9)


def llcm_name(pid: int, cam: int, k: int, mod: str) -> str:
    return f"{pid:04d}_c{cam:02d}_s{100 + k}_f{1000 + k}_{mod}.jpg"


def build_llcm(
    root: str | Path,
    *,
    train_ids: Sequence[int] = (1, 2, 3, 4, 5, 6),
    test_ids: Sequence[int] = (20, 21, 22, 23),
    seed: int = 3,
) -> dict[str, object]:
    """Write idx/train_{vis,nir}.txt (labels = rank of the pid), idx/test_id.txt and test_{vis,nir}/cam<K>/<pid>/.

    Training images live in ``vis/<pid>/`` and ``nir/<pid>/`` with DEEN-style names carrying the camera.
    Test folders have uneven sizes and some absent (pid, camera) folders; ``test_nir/cam3`` exists but is
    empty, as in the release. Returns the training entries per modality.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    entries: dict[str, list[tuple[str, int]]] = {"vis": [], "nir": []}
    for label, pid in enumerate(sorted(train_ids)):
        for mod, cams in (("vis", (1, 2, 5)), ("nir", (1, 4))):
            for cam in cams:
                for k in range(int(rng.integers(1, 4))):
                    rel = f"{mod}/{pid:04d}/{llcm_name(pid, cam, k, mod)}"
                    write_image(root / rel, mode="RGB" if mod == "vis" else "L")
                    entries[mod].append((rel, label))
    (root / "idx").mkdir(parents=True, exist_ok=True)
    for mod in ("vis", "nir"):
        (root / "idx" / f"train_{mod}.txt").write_text("".join(f"{p} {lab}\n" for p, lab in entries[mod]))
    (root / "idx" / "test_id.txt").write_text(",".join(str(i) for i in test_ids) + "\n")
    for top, cams, mod in (("test_vis", LLCM_VIS_CAMS, "vis"), ("test_nir", LLCM_NIR_CAMS, "nir")):
        for cam in cams:
            (root / top / f"cam{cam}").mkdir(parents=True, exist_ok=True)
            for pid in test_ids:
                if (pid + cam) % 4 == 0:
                    continue
                for k in range(int(rng.integers(1, 5))):
                    write_image(root / top / f"cam{cam}" / f"{pid:04d}" / llcm_name(pid, cam, k, mod))
    (root / "test_nir" / "cam3").mkdir(parents=True, exist_ok=True)
    return {"train": entries}


# ------------------------------------------------------------------------------------------------ RGBNT201


def build_rgbnt201(
    root: str | Path,
    *,
    train_ids: Sequence[int] = tuple(range(1, 11)),
    test_ids: Sequence[int] = (201, 202, 203),
    per_id: int = 2,
    nested: bool = True,
) -> Path:
    """Write ``[RGBNT201/]{train_171,test}/{RGB,NI,TI}/<pid:06d>_cam<k>_<j>.jpg`` triplets."""
    base = Path(root) / "RGBNT201" if nested else Path(root)
    for subset, ids in (("train_171", train_ids), ("test", test_ids)):
        for pid in ids:
            for j in range(per_id):
                name = f"{pid:06d}_cam{1 + (pid + j) % 4}_{j}_00.jpg"
                for mod in ("RGB", "NI", "TI"):
                    write_image(base / subset / mod / name, mode="RGB" if mod == "RGB" else "L")
    return base


# ------------------------------------------------------------------------------------------------ text


def text_entries(
    train_ids: Sequence[int] = (1, 2, 3, 4, 5, 6),
    val_ids: Sequence[int] = (7, 8),
    test_ids: Sequence[int] = (9, 10, 11),
    per_id: int = 2,
) -> list[dict]:
    """RGBT-PEDES-schema annotation entries (two captions each; one empty caption per identity)."""
    entries = []
    for split, ids in (("train", train_ids), ("val", val_ids), ("test", test_ids)):
        for pid in ids:
            for j in range(per_id):
                name = f"{pid:04d}_{j}.jpg"
                captions = [f"person {pid} view {j} in a red coat", "" if j == 1 else f"walker {pid} number {j}"]
                entries.append(
                    {
                        "split": split,
                        "id": pid,
                        "file_path": f"imgs/{split}/{name}",
                        "captions": captions,
                        "no_color_caption": [c.replace("red ", "") for c in captions],
                        "processed_tokens": [],
                    }
                )
    return entries


def build_rgbt_pedes(
    root: str | Path,
    entries: Sequence[dict] | None = None,
    *,
    thermal_dir: str = "T",
    annotations: str = "caption_2_no_color.json",
) -> Path:
    """Write ``RGBT-PEDES/{RGB,<thermal_dir>}/<basename>`` for every entry and the annotation JSON."""
    entries = list(entries if entries is not None else text_entries())
    base = Path(root) / "RGBT-PEDES"
    for entry in entries:
        name = entry["file_path"].rsplit("/", 1)[-1]
        write_image(base / "RGB" / name)
        write_image(base / thermal_dir / name, mode="P")
    (base / annotations).parent.mkdir(parents=True, exist_ok=True)
    (base / annotations).write_text(json.dumps(entries))
    return base


def build_rgbnt201_pedes(
    root: str | Path,
    entries: Sequence[dict] | None = None,
    *,
    nested: bool = False,
    annotations: str = "caption_2_no_color.json",
) -> Path:
    """RGBNT201-PEDES (assumed layout): ``<root>/{RGB,NI,TI}/<name>``, or RGBNT201 nesting
    ``<root>/<subset>/{RGB,NI,TI}/<name>`` with ``file_path`` = ``<subset>/RGB/<name>`` when ``nested``."""
    root = Path(root)
    entries = [dict(e) for e in (entries if entries is not None else text_entries())]
    for entry in entries:
        name = entry["file_path"].rsplit("/", 1)[-1]
        subset = "train_171" if entry["split"] != "test" else "test"
        if nested:
            entry["file_path"] = f"{subset}/RGB/{name}"
        for mod in ("RGB", "NI", "TI"):
            folder = root / subset / mod if nested else root / mod
            write_image(folder / name)
    (root / annotations).write_text(json.dumps(entries))
    return root
