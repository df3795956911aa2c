"""Gallery samplers of the SYSU-MM01 and LLCM protocols (data spec 3.1 and 3.3).

``random`` is the sampler of AGW, CAJ, DEEN, MCE and DAKD. Those codebases call ``random.seed(trial)``
and then the module-level ``random.choice`` / ``random.sample`` once per existing (identity, camera)
folder, identities in sorted order and cameras in list order. A private ``random.Random(trial)`` produces
the same stream without touching the global generator (G6), so the galleries are identical image for image.

``official`` replays the fixed permutations of the official MATLAB evaluation (``rand_perm_cam.mat``).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import PurePath

import numpy as np

from vireid.data.readers.base import CameraFolder
from vireid.data.readers.checks import warn
from vireid.data.records import ImageRecord
from vireid.errors import DataError, ProtocolError


def sample_random(folders: Sequence[CameraFolder], seed: int, shots: int) -> list[ImageRecord]:
    """One draw per folder from ``random.Random(seed)``, in the order of ``folders``.

    Args:
        folders: existing (identity, camera) folders, id-major and camera-minor; absent folders must not
            appear (the references make no draw for them).
        seed: the trial number.
        shots: 1 = ``rng.choice(files)``; otherwise ``rng.sample(files, shots)`` in the returned order
            (MCE/DAKD multi-shot), which needs at least ``shots`` files per folder.

    Raises:
        ProtocolError: a folder has fewer than ``shots`` images (the references raise ``ValueError`` too).
    """
    rng = random.Random(seed)
    chosen: list[ImageRecord] = []
    for folder in folders:
        if shots == 1:
            chosen.append(rng.choice(folder.records))
            continue
        if len(folder.records) < shots:
            where = os.path.dirname(folder.records[0].path) if folder.records else f"camera {folder.camid}"
            raise ProtocolError(
                f"{shots}-shot sampling needs {shots} images per identity and camera, but {where} holds "
                f"{len(folder.records)}.",
                fix="use single-shot (shots=1) or the official sampler, or complete this folder.",
            )
        chosen.extend(rng.sample(folder.records, shots))
    return chosen


@dataclass(frozen=True)
class OfficialPermutations:
    """The content of ``rand_perm_cam.mat``: for each camera and identity a 10 x n matrix of 1-based indices.

    Row ``t + 1`` (MATLAB numbering) of the matrix of (camera c, identity p) is a random permutation of the
    ``n`` images of ``cam<c>/<p>``; trial ``t`` takes its first ``N`` entries (N = 1 or 10).
    """

    path: str
    cameras: tuple[tuple[np.ndarray | None, ...], ...]  # [camera - 1][pid - 1] -> int matrix or None

    def entry(self, camid: int, pid: int) -> np.ndarray | None:
        """The permutation matrix of (camera, identity), or ``None`` if the file has none."""
        if not 1 <= camid <= len(self.cameras):
            return None
        per_pid = self.cameras[camid - 1]
        if not 1 <= pid <= len(per_pid):
            return None
        return per_pid[pid - 1]


def load_official_permutations(path: str) -> OfficialPermutations:
    """Read ``rand_perm_cam.mat`` (a 6 x 1 cell of cells indexed by pid - 1) with ``scipy.io.loadmat``.

    Raises:
        DataError: the file is missing, unreadable, or not shaped like the official file.
    """
    if not os.path.isfile(path):
        raise DataError(
            f"the official SYSU-MM01 gallery permutations {path} are missing.",
            fix="copy data_split/rand_perm_cam.mat of the official evaluation package (github.com/wuancong/"
            "SYSU-MM01, evaluation/data_split) into <root>/exp/, or use the random sampler.",
        )
    from scipy.io import loadmat

    try:
        content = loadmat(path)
    except Exception as exc:  # scipy raises several types for corrupt files
        raise DataError(f"{path} is not a readable MATLAB file ({exc}).", fix="download it again.") from None
    if "rand_perm_cam" not in content:
        raise DataError(f"{path} has no variable 'rand_perm_cam'.", fix="use the official data_split file.")
    cells = np.asarray(content["rand_perm_cam"], dtype=object).ravel()
    cameras: list[tuple[np.ndarray | None, ...]] = []
    for cam_index, cam_cell in enumerate(cells):
        per_pid: list[np.ndarray | None] = []
        for pid_index, entry in enumerate(np.asarray(cam_cell, dtype=object).ravel()):
            matrix = np.asarray(entry)
            if matrix.size == 0:
                per_pid.append(None)
                continue
            if matrix.dtype == object or matrix.ndim > 2:
                raise DataError(
                    f"{path}: entry of camera {cam_index + 1}, identity {pid_index + 1} is not a numeric matrix.",
                    fix="use the official data_split/rand_perm_cam.mat.",
                )
            per_pid.append(np.atleast_2d(matrix).astype(np.int64))
        cameras.append(tuple(per_pid))
    return OfficialPermutations(path, tuple(cameras))


def sample_official(
    lookup: dict[tuple[int, int], CameraFolder],
    pids: Iterable[int],
    cameras: Sequence[int],
    perms: OfficialPermutations,
    trial: int,
    shots: int,
) -> list[ImageRecord]:
    """The official gallery of trial ``trial``: the first ``shots`` indices of row ``trial + 1``.

    Identities are visited in sorted order and cameras in list order (the same order as ``random``; the
    gallery order does not change any metric). Index ``k`` selects the ``k``-th image of the folder in
    sorted file order; the Python ports build the name ``{k:04d}.jpg`` instead, so a file whose stem is not
    ``k`` is reported. A folder with fewer than ``shots`` images gives all of them, as in the official code.

    Raises:
        DataError: the permutation file refers to a folder or an image that does not exist.
    """
    chosen: list[ImageRecord] = []
    no_perm: list[str] = []
    size_mismatch: list[str] = []
    stem_mismatch: list[str] = []
    for pid in sorted(pids):
        for cam in cameras:
            folder = lookup.get((cam, pid))
            matrix = perms.entry(cam, pid)
            if matrix is None:
                if folder is not None:
                    no_perm.append(f"cam{cam}/{pid:04d}")
                continue
            if folder is None:
                raise DataError(
                    f"{perms.path} selects images of cam{cam}/{pid:04d}, which does not exist under the root.",
                    fix="complete the SYSU-MM01 download (the official permutations cover every test folder).",
                )
            if matrix.shape[0] <= trial:
                raise DataError(
                    f"{perms.path}: cam{cam}/{pid:04d} has {matrix.shape[0]} permutation rows, trial {trial} needs "
                    f"row {trial + 1}.",
                    fix="use the official data_split/rand_perm_cam.mat.",
                )
            files = folder.records
            if matrix.shape[1] != len(files):
                size_mismatch.append(f"cam{cam}/{pid:04d} ({matrix.shape[1]} vs {len(files)})")
            for k in matrix[trial, :shots].tolist():
                if not 1 <= k <= len(files):
                    raise DataError(
                        f"{perms.path}: trial {trial} selects image {k} of cam{cam}/{pid:04d}, which holds "
                        f"{len(files)} images.",
                        fix="complete the SYSU-MM01 download or use the official permutation file.",
                    )
                record = files[k - 1]
                stem = PurePath(record.path).stem
                if not (stem.isdigit() and int(stem) == k):
                    stem_mismatch.append(f"{k} -> {PurePath(record.path).name}")
                chosen.append(record)
    if no_perm:
        warn(f"{perms.path} has no permutation for {len(no_perm)} test folders, which add nothing: {no_perm[:5]}.")
    if size_mismatch:
        warn(
            f"{perms.path}: permutation length differs from the number of images for {len(size_mismatch)} "
            f"folders: {size_mismatch[:5]}."
        )
    if stem_mismatch:
        warn(
            f"official sampler, trial {trial}: {len(stem_mismatch)} selected images are not named after their "
            f"index (the Python ports would load another file): {stem_mismatch[:5]}."
        )
    return chosen
