"""Filesystem helpers shared by the readers: roots, required files, sorted image listings.

Every reader builds paths from the root it is given plus the components that the official layout
defines, and reads identity, camera and modality from those components (data spec G2). Nothing here
parses a full path: a root such as ``/data/cam_study/SYSU-MM01`` must not change any record.
"""

from __future__ import annotations

import os
from pathlib import Path

from vireid.errors import DataError

SYNTHETIC_MARKER = "vireid_synthetic.json"
"""File that ``vireid synth`` writes at the root of a generated set. Such sets are not compared with the
published counts of the real dataset (data spec G7)."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
"""File name endings (case-insensitive) that count as images when a folder is listed."""


def resolve_root(root: str | os.PathLike | None, dataset: str, expect: str) -> str:
    """Return ``root`` as an absolute path, or raise :class:`DataError` if it is unset or missing.

    vireid has no built-in dataset locations (data spec G1): the root always comes from the caller.
    ``expect`` describes what the folder should contain and is quoted in the fix.
    """
    if root is None or str(root).strip() == "":
        raise DataError(
            f"no root folder was given for {dataset}.",
            fix=f"pass the folder that contains {expect} (data.root=... in a config, --root on the command line).",
        )
    path = os.path.abspath(os.path.expanduser(os.fspath(root)))
    if not os.path.isdir(path):
        raise DataError(
            f"{dataset} root {path} does not exist or is not a folder.",
            fix=f"pass the folder that contains {expect}.",
        )
    return path


def is_synthetic_root(root: str) -> bool:
    """True if ``root`` holds the marker file of a set written by ``vireid synth``."""
    return os.path.isfile(os.path.join(root, SYNTHETIC_MARKER))


def require_file(path: str, what: str, fix: str) -> str:
    """Return ``path`` if it is a file, else raise :class:`DataError` naming it, what it is, and the fix."""
    if not os.path.isfile(path):
        raise DataError(f"{what} {path} is missing.", fix=fix)
    return path


def require_dir(path: str, what: str, fix: str) -> str:
    """Return ``path`` if it is a folder, else raise :class:`DataError` naming it, what it is, and the fix."""
    if not os.path.isdir(path):
        raise DataError(f"{what} {path} is missing.", fix=fix)
    return path


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def _entry_kind(entry: os.DirEntry) -> str:
    """``file``, ``dir`` or ``other`` for a folder entry; a symbolic link that cannot be followed is an error.

    ``DirEntry.is_file()`` follows links, and a link that loops (``a.jpg -> a.jpg``, or a chain back to
    itself) raises ``OSError(ELOOP)`` there, deep inside a reader; report it as the dataset problem it is.
    """
    try:
        return "file" if entry.is_file() else "dir" if entry.is_dir() else "other"
    except OSError as exc:
        raise DataError(
            f"{entry.path} cannot be followed ({exc.strerror or exc}); it is probably a symbolic link that "
            f"points back to itself.",
            fix="remove or repair this link in the dataset folder.",
        ) from None


def list_image_files(folder: str) -> tuple[list[str], list[str]]:
    """Image file names of ``folder`` in Python's default string order (data spec G4), and other entries.

    Hidden entries (``.DS_Store``, ``._x.jpg``) are ignored. The second list holds every other visible
    entry that is not an image file, so that callers can warn about it rather than drop it silently.
    """
    images: list[str] = []
    others: list[str] = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if _entry_kind(entry) == "file" and is_image_name(entry.name):
                images.append(entry.name)
            else:
                others.append(entry.name)
    images.sort()
    others.sort()
    return images, others


def list_subdirs(folder: str) -> tuple[list[str], list[str]]:
    """Sub-folder names of ``folder`` (sorted) and the names of other visible entries (files)."""
    dirs: list[str] = []
    others: list[str] = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            (dirs if _entry_kind(entry) == "dir" else others).append(entry.name)
    dirs.sort()
    others.sort()
    return dirs, others


def numeric_folders(folder: str, what: str) -> dict[int, str]:
    """Map ``int(name) -> name`` for the identity folders of ``folder`` (e.g. ``cam1/0001``).

    Raises :class:`DataError` naming the first folder whose name is not a number (IDKL crashes on such a
    folder with a bare ``ValueError``) or two names that denote the same number (``0001`` and ``1``).
    """
    dirs, _ = list_subdirs(folder)
    out: dict[int, str] = {}
    for name in dirs:
        if not name.isdigit():
            raise DataError(
                f"folder {os.path.join(folder, name)} has a name that is not a number, but the {what} folders "
                f"here must be named with numbers (like 0001).",
                fix="move this folder out of the dataset root.",
            )
        pid = int(name)
        if pid in out:
            raise DataError(
                f"{folder} has two folders for {what} {pid}: '{out[pid]}' and '{name}'.",
                fix="merge or remove one of them.",
            )
        out[pid] = name
    return out


def relative(path: str, root: str) -> str:
    """``path`` relative to ``root`` with forward slashes (for listings and messages)."""
    return Path(os.path.relpath(path, root)).as_posix()
