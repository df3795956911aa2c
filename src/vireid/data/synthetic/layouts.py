"""Writers of the official on-disk layouts (SYSU-MM01, RegDB, LLCM, RGBNT201, RGBT-PEDES, RGBNT201-PEDES).

``write_layout(layout, out, options)`` renders a synthetic set and writes it exactly as the real dataset is
laid out (data-and-protocols.md section 1), so vireid's readers, protocols and training run on it
unchanged. Each writer first *plans* the set (identities, splits, which camera sees whom, one
:class:`_Job` per image or aligned image pair/triplet, index files), then renders the jobs, then writes the
index files and ``vireid_synthetic.json``, the marker that declares the set synthetic (readers skip the
count comparison with the real dataset when they find it).

Determinism: every random choice is keyed by what it decides (see :mod:`~vireid.data.synthetic.seeding`),
so the same options give byte-identical files in any rendering order or number of worker processes.

Safety: the set is written into a temporary sibling folder and renamed into place at the end; on any error
the temporary folder is removed, so an interrupted run never leaves a half-written set that looks complete.
An existing non-empty folder is replaced only with ``overwrite=True`` *and* only if it is itself a set
written by ``vireid synth`` (it holds the marker file): ``--overwrite`` can never delete unrelated data.
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from vireid.data.synthetic.attributes import Identity, sample_identity
from vireid.data.synthetic.captions import describe
from vireid.data.synthetic.render import (
    ImageConditions,
    check_size,
    pseudo_colour,
    render_views,
    sample_conditions,
)
from vireid.data.synthetic.scene import CameraProfile
from vireid.data.synthetic.seeding import python_seed, stream
from vireid.errors import ConfigError, DataError

GENERATOR_VERSION = 1
MARKER_NAME = "vireid_synthetic.json"
LAYOUTS = ("sysu", "regdb", "llcm", "rgbnt201", "rgbt-pedes", "rgbnt201-pedes")

#: Annotation file of the RGBNT201-PEDES layout, relative to the output folder. Its ``file_path`` entries are
#: relative to the folder holding it (``RGBNT201/``), like ``caption_2_no_color.json`` in ``RGBT-PEDES/``.
RGBNT201_PEDES_ANNOTATIONS = "RGBNT201/caption_rgbnt201_pedes.json"
RGBT_PEDES_ANNOTATIONS = "RGBT-PEDES/caption_2_no_color.json"


# --------------------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class SynthOptions:
    """What to generate. ``None`` fields take the layout's default (see :data:`LAYOUT_DEFAULTS`).

    Attributes:
        num_ids: total number of identities over all splits.
        seed: the generator seed; the same options give byte-identical sets.
        difficulty: 0 (canonical poses, distinct people) .. 1 (loose crops, occlusion, strong light changes,
            many people sharing garments); the default 0.5 is non-trivial but learnable by a small CNN.
        size: image size ``(H, W)``; 128x64 by default.
        images_per_camera: ``(min, max)`` images per identity and camera (per aligned pair/triplet for RegDB,
            RGBNT201 and the text layouts). SYSU-MM01 test identities always get at least 10 per visible
            camera so that the multi-shot protocol (10 gallery images per folder) works.
        ir_look: ``auto`` (near-infrared for SYSU-MM01 and LLCM, thermal for RegDB and RGBT-PEDES; RGBNT201
            writes both), ``thermal`` or ``nir`` to force one look for the single-infrared layouts.
        jpeg_quality: quality of the JPEG files (the real sets are JPEG, except RegDB which is BMP).
        workers: rendering processes (1 = in this process). Output does not depend on it.
    """

    num_ids: int | None = None
    seed: int = 0
    difficulty: float = 0.5
    size: tuple[int, int] | None = None
    images_per_camera: tuple[int, int] | None = None
    ir_look: str = "auto"
    jpeg_quality: int = 92
    workers: int = 1


@dataclass(frozen=True)
class LayoutDefaults:
    """Per-layout defaults and limits of :class:`SynthOptions`."""

    num_ids: int
    min_ids: int
    max_ids: int
    images_per_camera: tuple[int, int]
    ir_look: str
    why_min: str  # what the minimum number of identities is needed for (for the error message)


LAYOUT_DEFAULTS: dict[str, LayoutDefaults] = {
    "sysu": LayoutDefaults(120, 8, 9999, (4, 8), "nir", "train, val and test splits with at least 2 test ids"),
    "regdb": LayoutDefaults(60, 4, 99999, (10, 10), "thermal", "a half/half train/test split with 2 ids each"),
    "llcm": LayoutDefaults(90, 6, 9999, (3, 6), "nir", "train and test splits with at least 2 test ids"),
    "rgbnt201": LayoutDefaults(60, 6, 999999, (3, 6), "both", "train_171 and test with at least 2 test ids"),
    "rgbt-pedes": LayoutDefaults(100, 6, 99999, (2, 4), "thermal", "train, val and test splits"),
    "rgbnt201-pedes": LayoutDefaults(60, 8, 999999, (3, 6), "both", "train, val and test splits"),
}


def _resolve(layout: str, options: SynthOptions) -> tuple[SynthOptions, LayoutDefaults]:
    """Fill in the layout defaults and validate; raises ConfigError naming the argument and the fix."""
    if layout not in LAYOUT_DEFAULTS:
        raise ConfigError(f"unknown layout '{layout}'.", fix=f"use one of: {', '.join(LAYOUTS)}.")
    d = LAYOUT_DEFAULTS[layout]
    n = d.num_ids if options.num_ids is None else int(options.num_ids)
    if n < d.min_ids:
        raise ConfigError(
            f"--ids {n} is too few for the {layout} layout: it needs at least {d.min_ids} identities ({d.why_min}).",
            fix=f"pass --ids {d.min_ids} or more (default {d.num_ids}).",
        )
    if n > d.max_ids:
        raise ConfigError(
            f"--ids {n} is too many for the {layout} layout (its identity numbers have at most {len(str(d.max_ids))} "
            f"digits).",
            fix=f"pass --ids {d.max_ids} or fewer.",
        )
    if not 0.0 <= float(options.difficulty) <= 1.0 or math.isnan(float(options.difficulty)):
        raise ConfigError(
            f"--difficulty {options.difficulty} is outside 0..1.", fix="pass a value between 0 and 1 (default 0.5)."
        )
    if int(options.seed) < 0:
        raise ConfigError(f"--seed {options.seed} is negative.", fix="pass a seed >= 0.")
    size = (128, 64) if options.size is None else tuple(int(v) for v in options.size)
    if len(size) != 2:
        raise ConfigError(f"--size {options.size} is not (H, W).", fix="pass --size HxW, e.g. 128x64.")
    try:
        size = check_size(size)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ConfigError(f"--size: {exc}.", fix="pass --size 128x64 (the default), 64x32 or 256x128.") from None
    per_cam = (
        d.images_per_camera if options.images_per_camera is None else tuple(int(v) for v in options.images_per_camera)
    )
    if len(per_cam) != 2 or per_cam[0] < 1 or per_cam[0] > per_cam[1] or per_cam[1] > 500:
        raise ConfigError(
            f"images_per_camera {options.images_per_camera} must be (min, max) with 1 <= min <= max <= 500.",
            fix=f"omit it (default {d.images_per_camera}) or pass e.g. (4, 8).",
        )
    if layout == "regdb" and per_cam[0] < 1:
        raise ConfigError("RegDB needs at least one image pair per identity.", fix="omit images_per_camera.")
    if options.ir_look not in ("auto", "thermal", "nir"):
        raise ConfigError(f"ir_look '{options.ir_look}' is not one of auto, thermal, nir.", fix="use ir_look='auto'.")
    if not 1 <= int(options.jpeg_quality) <= 100:
        raise ConfigError(f"jpeg_quality {options.jpeg_quality} is outside 1..100.", fix="use the default 92.")
    if int(options.workers) < 1:
        raise ConfigError(f"workers {options.workers} must be at least 1.", fix="use workers=1.")
    resolved = replace(
        options,
        num_ids=n,
        size=size,
        images_per_camera=per_cam,
        difficulty=float(options.difficulty),
        seed=int(options.seed),
    )
    return resolved, d


# --------------------------------------------------------------------------------------------- summary


@dataclass(frozen=True)
class ImageCount:
    """Number of image files (or aligned pairs/triplets) in one split / camera-or-folder / modality."""

    split: str
    group: str
    modality: str
    images: int


@dataclass
class SynthSummary:
    """What :func:`write_layout` wrote: identities per split, image counts, captions, time taken."""

    layout: str
    root: Path
    num_ids: int
    ids: dict[str, int]
    counts: list[ImageCount]
    captions: int = 0
    files: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def total_images(self) -> int:
        """Total number of image files written."""
        return self.files

    def count(self, split: str | None = None, group: str | None = None, modality: str | None = None) -> int:
        """Sum of :attr:`counts` rows matching the given fields (``None`` matches anything)."""
        return sum(
            c.images
            for c in self.counts
            if (split is None or c.split == split)
            and (group is None or c.group == group)
            and (modality is None or c.modality == modality)
        )

    def to_dict(self) -> dict:
        """JSON-friendly counts (also stored in the marker file, without the timing)."""
        return {
            "ids": dict(self.ids),
            "images": [asdict(c) for c in self.counts],
            "captions": self.captions,
            "files": self.files,
        }

    def describe(self) -> str:
        """A human-readable summary: one line per split with its identities and images per camera/folder."""
        lines = [
            f"synthetic {self.layout} set: {self.num_ids} identities, {self.files} image files"
            + (f", {self.captions} captions" if self.captions else "")
            + f", written to {self.root} in {self.seconds:.1f} s"
        ]
        splits = list(dict.fromkeys(c.split for c in self.counts))
        for split in splits:
            rows = [c for c in self.counts if c.split == split]
            cells = ", ".join(f"{c.group} {c.modality} {c.images}" for c in rows)
            ids = self.ids.get(split)
            lines.append(f"  {split:<10} {'' if ids is None else f'{ids} ids: '}{cells}")
        for split, n in self.ids.items():
            if split not in splits:
                lines.append(f"  {split:<10} {n} ids")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class _Job:
    """One rendered moment: an image, or an aligned pair/triplet written to several files."""

    pid: int
    camera: CameraProfile
    keys: tuple[int, ...]  # random-stream keys after the pid (camera, index, ...)
    files: tuple[tuple[str, str], ...]  # (look, path relative to the set root); look "thermal-pseudo" = coloured
    conditions: ImageConditions


@dataclass
class _Plan:
    jobs: list[_Job] = field(default_factory=list)
    text_files: dict[str, str] = field(default_factory=dict)  # relative path -> content
    binary_files: dict[str, bytes] = field(default_factory=dict)
    empty_dirs: list[str] = field(default_factory=list)
    ids: dict[str, int] = field(default_factory=dict)
    counts: list[ImageCount] = field(default_factory=list)
    captions: int = 0
    marker_extra: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class _Planner:
    """Shared helpers of the layout planners."""

    def __init__(self, options: SynthOptions):
        self.o = options
        self.seed = options.seed
        self.difficulty = options.difficulty
        self.plan = _Plan()
        self._counter: Counter[tuple[str, str, str]] = Counter()

    def camera_seed(self, layout: str, key: int | str) -> int:
        return python_seed(self.seed, "scene", layout, key)

    def conditions(
        self, pid: int, camera: CameraProfile, keys: Sequence[int], night_rate: float = 0.0
    ) -> ImageConditions:
        return sample_conditions(stream(self.seed, "pose", pid, *keys), camera, self.difficulty, night_rate=night_rate)

    def add(
        self,
        pid: int,
        camera: CameraProfile,
        keys: Sequence[int],
        files: Sequence[tuple[str, str]],
        count_as: tuple[str, str, str],
        conditions: ImageConditions | None = None,
    ) -> _Job:
        c = conditions if conditions is not None else self.conditions(pid, camera, keys)
        job = _Job(pid=pid, camera=camera, keys=tuple(int(k) for k in keys), files=tuple(files), conditions=c)
        self.plan.jobs.append(job)
        self._counter[count_as] += 1
        return job

    def images_per_camera(self, rng: np.random.Generator, minimum: int = 1) -> int:
        lo, hi = self.o.images_per_camera  # type: ignore[misc]
        if lo < minimum:  # e.g. SYSU-MM01 test gallery folders: 10..12 images whatever the training range
            lo, hi = minimum, max(hi, minimum + 2)
        return int(rng.integers(lo, hi + 1))

    def split_ids(
        self, pids: Sequence[int], fractions: Sequence[tuple[str, float, int]], purpose: str
    ) -> dict[str, list[int]]:
        """Shuffle ``pids`` and cut them into named splits of ``round(n * fraction)`` (at least ``minimum``) ids.

        The last split takes the remainder. Each split is returned sorted (numeric order, spec G4).
        """
        order = [int(p) for p in stream(self.seed, "split", purpose).permutation(np.asarray(pids))]
        n = len(order)
        out: dict[str, list[int]] = {}
        start = 0
        for i, (name, frac, minimum) in enumerate(fractions):
            if i == len(fractions) - 1:
                take = n - start
            else:
                take = max(minimum, round(n * frac))
            out[name] = sorted(order[start : start + take])
            start += take
        return out

    def finish(self) -> _Plan:
        self.plan.counts = [ImageCount(s, g, m, n) for (s, g, m), n in self._counter.items()]
        return self.plan


def _ids_line(ids: Iterable[int]) -> str:
    return ",".join(str(int(i)) for i in ids) + "\n"


def _mat_bytes(variables: dict) -> bytes:
    """A MATLAB v5 file as bytes, with a fixed header text (scipy writes the creation time, which would make
    otherwise identical sets differ byte for byte)."""
    from scipy.io import savemat

    buf = io.BytesIO()
    savemat(buf, variables, format="5", oned_as="row")
    data = bytearray(buf.getvalue())
    header = f"MATLAB 5.0 MAT-file, Platform: vireid, Created by: vireid synth (generator {GENERATOR_VERSION})"
    data[:116] = header.encode("ascii").ljust(116, b" ")[:116]
    return bytes(data)


def _look(options: SynthOptions, default: str) -> str:
    return default if options.ir_look == "auto" else options.ir_look


# ------------------------------------------------------------------------------------------------ SYSU


def _sysu_cameras(p: _Planner) -> dict[int, CameraProfile]:
    ir = _look(p.o, "nir")
    room1, room2 = p.camera_seed("sysu", 1), p.camera_seed("sysu", 2)
    gate, garden, passage = p.camera_seed("sysu", 4), p.camera_seed("sysu", 5), p.camera_seed("sysu", 6)
    return {
        1: CameraProfile("cam1", 1, "indoor", room1, light=1.0, cast=(1.07, 1.0, 0.88), ambient=0.42, ir_look=ir),
        2: CameraProfile("cam2", 2, "indoor", room2, light=0.85, cast=(0.92, 0.98, 1.1), ambient=0.42, ir_look=ir),
        # cam3 films the same room as cam2 (dark, infrared): same scene seed.
        3: CameraProfile(
            "cam3", 3, "indoor", room2, light=0.8, ambient=0.42, ir_look=ir, view_weights=(1.0, 1.0, 0.35)
        ),
        4: CameraProfile(
            "cam4", 4, "outdoor", gate, light=1.15, cast=(1.0, 1.0, 0.97), noise=0.01, ambient=0.3, ir_look=ir
        ),
        5: CameraProfile("cam5", 5, "outdoor", garden, light=1.05, cast=(0.96, 1.04, 0.93), ambient=0.3, ir_look=ir),
        6: CameraProfile(
            "cam6", 6, "outdoor", passage, light=0.9, ambient=0.28, ir_look=ir, view_weights=(1.0, 1.0, 0.8)
        ),
    }


def _plan_sysu(o: SynthOptions) -> _Plan:
    p = _Planner(o)
    n = o.num_ids or 0
    cams = _sysu_cameras(p)
    # The real set numbers its 491 identities within 1..533; leave similar gaps so readers cannot assume
    # contiguous ids (training labels come from sorted unique pids, spec G5).
    max_pid = max(n, math.ceil(n * 533 / 491))
    pids = sorted(int(v) for v in stream(o.seed, "sysu-pids").choice(np.arange(1, max_pid + 1), n, replace=False))
    splits = p.split_ids(pids, [("test", 96 / 491, 2), ("val", 99 / 491, 1), ("train", 0.0, 1)], "sysu")
    split_of = {pid: s for s, ids in splits.items() for pid in ids}
    folders: dict[tuple[int, int], int] = {}
    for pid in pids:
        r = stream(o.seed, "sysu-cameras", pid)
        vis = [c for c in (1, 2, 4, 5) if r.random() < 0.7] or [int(r.choice([1, 2, 4, 5]))]
        ir = [c for c in (3, 6) if r.random() < 0.75] or [int(r.choice([3, 6]))]
        for c in vis + ir:
            gallery = split_of[pid] == "test" and c in vis
            count = p.images_per_camera(r, minimum=10 if gallery else 1)
            folders[(c, pid)] = count
            for k in range(1, count + 1):
                modality = "visible" if c in vis else "infrared"
                look = "visible" if c in vis else cams[c].ir_look
                p.add(
                    pid,
                    cams[c],
                    (c, k),
                    [(look, f"cam{c}/{pid:04d}/{k:04d}.jpg")],
                    (split_of[pid], f"cam{c}", modality),
                )
    p.plan.ids = {s: len(v) for s, v in splits.items()}
    for name in ("train", "val", "test"):
        p.plan.text_files[f"exp/{name}_id.txt"] = _ids_line(splits[name])
        p.plan.binary_files[f"exp/{name}_id.mat"] = _mat_bytes(
            {"id": np.asarray(splits[name], dtype=np.uint16)[None, :]}
        )
    p.plan.text_files["exp/available_id.txt"] = _ids_line(pids)
    p.plan.binary_files["exp/available_id.mat"] = _mat_bytes({"id": np.asarray(pids, dtype=np.uint16)[None, :]})
    p.plan.binary_files["exp/rand_perm_cam.mat"] = _sysu_rand_perm(o.seed, folders)
    p.plan.marker_extra = {
        "dataset_root": ".",
        "cameras": {f"cam{c}": cams[c].ir_look if c in (3, 6) else "visible" for c in cams},
    }
    return p.finish()


def _sysu_rand_perm(seed: int, folders: dict[tuple[int, int], int]) -> bytes:
    """``exp/rand_perm_cam.mat`` in the structure of the official evaluation package.

    ``rand_perm_cam`` is a 6x1 cell (one per camera); camera c holds a cell with one entry per pid 1..P_c
    (P_c = largest pid seen by that camera, as in the official file whose cells end at different pids);
    entry pid-1 is a 10 x n matrix whose row t+1 is a random permutation of 1..n (n = images of that pid
    in that camera), or an empty 10 x 0 matrix when the camera never saw the pid. Stored as uint8 like the
    official file (uint16 when a folder holds more than 255 images).
    """
    outer = np.empty((6, 1), dtype=object)
    for c in range(1, 7):
        seen = [pid for (cam, pid) in folders if cam == c]
        length = max(seen, default=0)
        inner = np.empty((length, 1), dtype=object)
        for i in range(length):
            n = folders.get((c, i + 1), 0)
            dtype = np.uint8 if n <= 255 else np.uint16
            if n == 0:
                inner[i, 0] = np.zeros((10, 0), dtype=np.uint8)
                continue
            r = stream(seed, "rand-perm-cam", c, i + 1)
            inner[i, 0] = np.stack([r.permutation(n) + 1 for _ in range(10)]).astype(dtype)
        outer[c - 1, 0] = inner
    return _mat_bytes({"rand_perm_cam": outer})


# ----------------------------------------------------------------------------------------------- RegDB


def _plan_regdb(o: SynthOptions) -> _Plan:
    p = _Planner(o)
    n = o.num_ids or 0
    # One dual (visible + thermal) camera filming people walking towards or away from it.
    cam = CameraProfile(
        "regdb",
        1,
        "outdoor",
        p.camera_seed("regdb", 1),
        light=1.0,
        ambient=0.3,
        ir_look=_look(o, "thermal"),
        view_weights=(1.0, 1.0, 0.0),
    )
    names: dict[int, list[tuple[str, str]]] = {}
    frame = 0
    for pid in range(1, n + 1):
        person = _identity(o.seed, pid, o.difficulty)
        names[pid] = []
        for k in range(1, p.images_per_camera(stream(o.seed, "regdb-count", pid)) + 1):
            frame += 1
            c = p.conditions(pid, cam, (1, k))
            stem = f"{person.gender}_{c.view}_{{}}_{frame:05d}_{pid}.bmp"
            vis, th = f"Visible/{pid}/{stem.format('v')}", f"Thermal/{pid}/{stem.format('t')}"
            names[pid].append((vis, th))
            p.add(
                pid,
                cam,
                (1, k),
                [("visible", vis), (cam.ir_look, th)],
                ("all", "Visible+Thermal", "pairs"),
                conditions=c,
            )
    p.plan.ids = {"all": n, "train (per trial)": n - n // 2, "test (per trial)": n // 2}
    for trial in range(1, 11):
        rng = random.Random(python_seed(o.seed, "regdb-trial", trial))
        test = sorted(rng.sample(range(1, n + 1), n // 2))
        train = sorted(set(range(1, n + 1)) - set(test))
        for split, ids in (("train", train), ("test", test)):
            # Labels are class indices 0..len(ids)-1 in id order, for train and for test files alike.
            for modality, column in (("visible", 0), ("thermal", 1)):
                lines = [f"{pair[column]} {label}" for label, pid in enumerate(ids) for pair in names[pid]]
                p.plan.text_files[f"idx/{split}_{modality}_{trial}.txt"] = "\n".join(_sorted_pairs(lines)) + "\n"
    p.plan.marker_extra = {"dataset_root": ".", "thermal_look": cam.ir_look}
    return p.finish()


def _sorted_pairs(lines: list[str]) -> list[str]:
    # Within one identity the real index files list images by file name; identities stay in label order.
    return sorted(lines, key=lambda s: (int(s.rsplit(" ", 1)[1]), s.rsplit(" ", 1)[0]))


# ------------------------------------------------------------------------------------------------ LLCM


def _llcm_cameras(p: _Planner) -> dict[int, CameraProfile]:
    ir = _look(p.o, "nir")
    out = {}
    for c in range(1, 10):
        r = stream(p.seed, "llcm-camera", c)
        scene = "indoor" if r.random() < 0.35 else "outdoor"
        # Low-light visible cameras: dim, noisy, colour casts from street and shop lighting.
        light = float(r.uniform(0.35, 0.8))
        cast = tuple(float(v) for v in np.exp(r.normal(0, 0.08, 3)))
        out[c] = CameraProfile(
            f"cam{c}",
            c,
            scene,
            p.camera_seed("llcm", c),
            light=light,
            cast=cast,
            noise=0.018,
            ambient=0.3,
            ir_look=ir,  # type: ignore[arg-type]
        )
    return out


def _plan_llcm(o: SynthOptions) -> _Plan:
    p = _Planner(o)
    n = o.num_ids or 0
    cams = _llcm_cameras(p)
    pids = list(range(1, n + 1))
    splits = p.split_ids(pids, [("test", 351 / 1064, 2), ("train", 0.0, 1)], "llcm")
    split_of = {pid: s for s, ids in splits.items() for pid in ids}
    nir_cams = [1, 2, 4, 5, 6, 7, 8, 9]  # test_nir/cam3 is empty in the real set
    train_lists: dict[str, list[tuple[int, str]]] = {"vis": [], "nir": []}
    for pid in pids:
        r = stream(o.seed, "llcm-cameras", pid)
        # Each camera switches between VIS (day) and NIR (night), so camera numbers are shared by both
        # modalities. Two or more VIS cameras guarantee every NIR query a VIS match from another camera.
        vis = sorted(int(c) for c in r.choice(np.arange(1, 10), int(r.integers(2, 5)), replace=False))
        nir = sorted(int(c) for c in r.choice(np.asarray(nir_cams), int(r.integers(1, 4)), replace=False))
        for mod, cam_list in (("vis", vis), ("nir", nir)):
            for c in cam_list:
                count = p.images_per_camera(r)
                seq = int(r.integers(100000, 1000000))
                frame = int(r.integers(1, 9000))
                for k in range(1, count + 1):
                    frame += int(r.integers(5, 40))
                    name = f"{pid:04d}_c{c:02d}_s{seq}_f{frame}_{mod}.jpg"
                    if split_of[pid] == "test":
                        rel = f"test_{mod}/cam{c}/{pid:04d}/{name}"
                    else:
                        rel = f"{mod}/{pid:04d}/{name}"
                        train_lists[mod].append((pid, rel))
                    look = "visible" if mod == "vis" else cams[c].ir_look
                    modality = "visible" if mod == "vis" else "infrared"
                    key = 0 if mod == "vis" else 1
                    p.add(pid, cams[c], (c, key, k), [(look, rel)], (split_of[pid], f"cam{c}", modality))
    label = {pid: i for i, pid in enumerate(splits["train"])}
    for mod, entries in train_lists.items():
        lines = [f"{rel} {label[pid]}" for pid, rel in sorted(entries)]
        p.plan.text_files[f"idx/train_{mod}.txt"] = "\n".join(lines) + "\n"
    p.plan.text_files["idx/test_id.txt"] = _ids_line(splits["test"])
    p.plan.empty_dirs.append("test_nir/cam3")
    p.plan.ids = {s: len(v) for s, v in splits.items()}
    p.plan.marker_extra = {"dataset_root": ".", "nir_look": _look(o, "nir")}
    return p.finish()


# -------------------------------------------------------------------------------------------- RGBNT201


def _rgbnt201_cameras(p: _Planner) -> dict[int, CameraProfile]:
    scenes = ("outdoor", "outdoor", "indoor", "outdoor")
    return {
        c: CameraProfile(
            f"cam{c}",
            c,
            scenes[c - 1],
            p.camera_seed("rgbnt201", c),
            light=float(stream(p.seed, "rgbnt201-light", c).uniform(0.55, 1.1)),
            ambient=0.3 if scenes[c - 1] == "outdoor" else 0.42,
            ir_look="thermal",
        )
        for c in range(1, 5)
    }


def _plan_rgbnt201_tree(p: _Planner) -> tuple[dict[str, list[int]], list[tuple[int, str, str, _Job]]]:
    """Images of the RGBNT201 tree; returns the splits and (pid, subset, name, job) per triplet."""
    o = p.o
    n = o.num_ids or 0
    cams = _rgbnt201_cameras(p)
    pids = list(range(1, n + 1))
    splits = p.split_ids(pids, [("test", 30 / 201, 2), ("train_171", 0.0, 1)], "rgbnt201")
    subset_of = {pid: s for s, ids in splits.items() for pid in ids}
    triplets = []
    for pid in pids:
        r = stream(o.seed, "rgbnt201-cameras", pid)
        chosen = [c for c in range(1, 5) if r.random() < 0.8]
        while len(chosen) < 2:
            chosen = sorted(set(chosen) | {int(r.integers(1, 5))})
        for c in chosen:
            for k in range(1, p.images_per_camera(r) + 1):
                name = f"{pid:06d}_cam{c}_{k:04d}.jpg"
                sub = subset_of[pid]
                files = [
                    (look, f"RGBNT201/{sub}/{folder}/{name}")
                    for look, folder in (("visible", "RGB"), ("nir", "NI"), ("thermal", "TI"))
                ]
                job = p.add(pid, cams[c], (c, k), files, (sub, f"cam{c}", "RGB+NI+TI"))
                triplets.append((pid, sub, name, job))
    return splits, triplets


def _plan_rgbnt201(o: SynthOptions) -> _Plan:
    p = _Planner(o)
    splits, _ = _plan_rgbnt201_tree(p)
    p.plan.ids = {s: len(v) for s, v in splits.items()}
    p.plan.marker_extra = {"dataset_root": "."}
    return p.finish()


def _caption_records(
    o: SynthOptions, entries: Sequence[tuple[int, str, str, ImageConditions]]
) -> tuple[list[dict], int]:
    """RGBT-PEDES-schema records ``{split, id, file_path, captions, no_color_caption}`` (1-2 captions each)."""
    records = []
    total = 0
    for pid, split, file_path, cond in entries:
        r = stream(o.seed, "captions", pid, file_path)
        count = 2 if r.random() < 0.7 else 1
        pairs = [describe(_identity(o.seed, pid, o.difficulty), r, cond.view) for _ in range(count)]
        records.append(
            {
                "split": split,
                "id": pid,
                "file_path": file_path,
                "captions": [c for c, _ in pairs],
                "no_color_caption": [nc for _, nc in pairs],
            }
        )
        total += count
    return records, total


def _plan_rgbnt201_pedes(o: SynthOptions) -> _Plan:
    p = _Planner(o)
    splits, triplets = _plan_rgbnt201_tree(p)
    # RGBNT201's train_171 = 141 training + 30 validation identities; keep that ratio for the val split.
    train171 = splits["train_171"]
    inner = p.split_ids(train171, [("val", 30 / 171, 1), ("train", 0.0, 1)], "rgbnt201-pedes")
    split_of = {pid: "test" for pid in splits["test"]} | {pid: s for s, ids in inner.items() for pid in ids}
    entries = [(pid, split_of[pid], f"{sub}/RGB/{name}", job.conditions) for pid, sub, name, job in triplets]
    records, total = _caption_records(o, entries)
    p.plan.text_files[RGBNT201_PEDES_ANNOTATIONS] = json.dumps(records, indent=1, ensure_ascii=False) + "\n"
    p.plan.captions = total
    p.plan.ids = {"train": len(inner["train"]), "val": len(inner["val"]), "test": len(splits["test"])}
    p.plan.marker_extra = {"dataset_root": ".", "annotations": RGBNT201_PEDES_ANNOTATIONS, "file_path_base": "RGBNT201"}
    p.plan.notes.append(f"captions in {RGBNT201_PEDES_ANNOTATIONS}; file_path is relative to RGBNT201/")
    return p.finish()


# ------------------------------------------------------------------------------------------ RGBT-PEDES


def _plan_rgbt_pedes(o: SynthOptions) -> _Plan:
    p = _Planner(o)
    n = o.num_ids or 0
    look = _look(o, "thermal")
    cams = [
        CameraProfile(
            f"scene{c}",
            c,
            "indoor" if c % 3 == 0 else "outdoor",
            p.camera_seed("rgbt-pedes", c),
            light=float(stream(o.seed, "rgbt-pedes-light", c).uniform(0.6, 1.15)),
            ambient=0.28 if c % 3 else 0.42,
            ir_look=look,
        )
        for c in range(1, 7)
    ]
    pids = list(range(1, n + 1))
    splits = p.split_ids(pids, [("test", 0.2, 2), ("val", 0.1, 1), ("train", 0.0, 2)], "rgbt-pedes")
    split_of = {pid: s for s, ids in splits.items() for pid in ids}
    entries = []
    thermal_out = "thermal-pseudo" if look == "thermal" else look
    for pid in pids:
        r = stream(o.seed, "rgbt-pedes-pairs", pid)
        for k in range(1, p.images_per_camera(r) + 1):
            cam = cams[int(r.integers(len(cams)))]
            name = f"{pid:04d}_{k:02d}.jpg"
            # About a third of the pairs are taken at night: dark, noisy RGB next to a clear thermal image.
            c = p.conditions(pid, cam, (cam.camid, k), night_rate=0.3)
            files = [("visible", f"RGBT-PEDES/RGB/{name}"), (thermal_out, f"RGBT-PEDES/T/{name}")]
            p.add(pid, cam, (cam.camid, k), files, (split_of[pid], "RGB+T", "pairs"), conditions=c)
            entries.append((pid, split_of[pid], f"RGB/{name}", c))
    records, total = _caption_records(o, entries)
    p.plan.text_files[RGBT_PEDES_ANNOTATIONS] = json.dumps(records, indent=1, ensure_ascii=False) + "\n"
    p.plan.captions = total
    p.plan.ids = {s: len(v) for s, v in splits.items()}
    p.plan.marker_extra = {
        "dataset_root": ".",
        "annotations": RGBT_PEDES_ANNOTATIONS,
        "thermal_storage": "pseudo-colour" if look == "thermal" else "gray3",
    }
    return p.finish()


_PLANNERS: dict[str, Callable[[SynthOptions], _Plan]] = {
    "sysu": _plan_sysu,
    "regdb": _plan_regdb,
    "llcm": _plan_llcm,
    "rgbnt201": _plan_rgbnt201,
    "rgbt-pedes": _plan_rgbt_pedes,
    "rgbnt201-pedes": _plan_rgbnt201_pedes,
}


# ------------------------------------------------------------------------------------------- rendering


@lru_cache(maxsize=4096)
def _identity(seed: int, pid: int, difficulty: float) -> Identity:
    return sample_identity(seed, pid, difficulty)


def _render_jobs(
    root: str, jobs: Sequence[_Job], seed: int, difficulty: float, size: tuple[int, int], quality: int
) -> int:
    """Render ``jobs`` and write their files under ``root``; returns the number of files written."""
    written = 0
    made: set[str] = set()
    for job in jobs:
        person = _identity(seed, job.pid, difficulty)
        looks = [look.replace("-pseudo", "") for look, _ in job.files]
        images = render_views(
            person,
            job.camera,
            looks,
            stream(seed, "image", job.pid, *job.keys),
            size,
            difficulty=difficulty,
            conditions=job.conditions,
        )
        for (look, rel), arr in zip(job.files, images):
            if look.endswith("-pseudo"):
                arr = pseudo_colour(arr)
            path = os.path.join(root, rel)
            parent = os.path.dirname(path)
            if parent not in made:
                os.makedirs(parent, exist_ok=True)
                made.add(parent)
            img = Image.fromarray(arr)
            if rel.endswith(".bmp"):
                img.save(path, format="BMP")
            else:
                img.save(path, format="JPEG", quality=quality)
            written += 1
    return written


def _render_all(root: Path, plan: _Plan, o: SynthOptions) -> int:
    size: tuple[int, int] = o.size  # type: ignore[assignment]
    if o.workers <= 1 or len(plan.jobs) < 64:
        return _render_jobs(str(root), plan.jobs, o.seed, o.difficulty, size, o.jpeg_quality)
    chunks = [plan.jobs[i :: o.workers * 4] for i in range(o.workers * 4)]
    with ProcessPoolExecutor(max_workers=o.workers) as pool:
        futures = [
            pool.submit(_render_jobs, str(root), chunk, o.seed, o.difficulty, size, o.jpeg_quality) for chunk in chunks
        ]
        return sum(f.result() for f in futures)


# ---------------------------------------------------------------------------------------- output folder


def _prepare_output(out: Path, overwrite: bool) -> Path:
    """Check ``out`` and create the temporary sibling folder that the set is written into."""
    if out.exists() and not out.is_dir():
        raise DataError(f"output path {out} exists and is not a folder.", fix="pass --out with a folder path.")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise DataError(
                f"output folder {out} is not empty.",
                fix="choose a new or empty folder, or pass --overwrite to replace a set written by vireid synth.",
            )
        if not (out / MARKER_NAME).is_file():
            raise DataError(
                f"output folder {out} is not empty and has no {MARKER_NAME}, so it is not a set written by vireid "
                "synth; --overwrite only replaces such sets.",
                fix="choose another folder, or delete this one yourself if you are sure.",
            )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as exc:
        raise DataError(
            f"cannot write the output folder {out}: {exc.strerror or exc}.", fix="pass --out with a writable location."
        ) from None


def _move_into_place(tmp: Path, out: Path) -> None:
    if out.is_dir():
        if any(out.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rmdir(old)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
            return
        out.rmdir()
    os.replace(tmp, out)


def write_layout(
    layout: str, out: str | Path, options: SynthOptions | None = None, *, overwrite: bool = False
) -> SynthSummary:
    """Generate a synthetic set in the official on-disk layout ``layout`` under ``out``.

    Args:
        layout: ``sysu``, ``regdb``, ``llcm``, ``rgbnt201``, ``rgbt-pedes`` or ``rgbnt201-pedes``.
        out: output folder; must be absent or empty, or (with ``overwrite``) a previous synthetic set.
        options: what to generate (:class:`SynthOptions`; defaults per layout).
        overwrite: replace an existing synthetic set at ``out``.

    Returns:
        a :class:`SynthSummary` of what was written.

    Raises:
        ConfigError: impossible options (too few identities for the splits, a size too small to draw a person,
            difficulty outside 0..1, ...).
        DataError: the output folder is not usable (not empty, not writable, a file).
    """
    started = time.perf_counter()
    o, _defaults = _resolve(layout, options or SynthOptions())
    out = Path(out).expanduser().absolute()
    tmp = _prepare_output(out, overwrite)
    try:
        plan = _PLANNERS[layout](o)
        written = _render_all(tmp, plan, o)
        for rel, text in plan.text_files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(text, encoding="utf-8")
        for rel, data in plan.binary_files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)
        for rel in plan.empty_dirs:
            (tmp / rel).mkdir(parents=True, exist_ok=True)
        summary = SynthSummary(
            layout=layout,
            root=out,
            num_ids=o.num_ids or 0,
            ids=plan.ids,
            counts=plan.counts,
            captions=plan.captions,
            files=written,
            notes=list(plan.notes),
        )
        marker = {
            "synthetic": True,
            "generator": "vireid.data.synthetic",
            "generator_version": GENERATOR_VERSION,
            "layout": layout,
            "seed": o.seed,
            "options": {**asdict(o), "size": list(o.size or ()), "images_per_camera": list(o.images_per_camera or ())},
            "counts": summary.to_dict(),
            **plan.marker_extra,
        }
        marker["options"].pop("workers", None)  # does not change the output
        (tmp / MARKER_NAME).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        _move_into_place(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(
            f"writing the synthetic set to {out} failed: {exc}.", fix="check free disk space and permissions."
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary.seconds = time.perf_counter() - started
    return summary


def read_marker(root: str | Path) -> dict | None:
    """The parsed ``vireid_synthetic.json`` of a set, or ``None`` if ``root`` is not a synthetic set.

    Readers call this to skip comparing counts with the real dataset's (spec G7).
    """
    path = Path(root) / MARKER_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc}).", fix="re-generate the set with vireid synth.") from None
