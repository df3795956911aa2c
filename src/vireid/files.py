"""Folders vireid owns: ownership marks, atomic temporary folders, run locks and clear storage errors.

The rule behind this module: **vireid never deletes or replaces a folder it did not create.** Every folder
vireid creates and may later replace or delete (a gallery index, a run folder, the demo's run) carries a
small marker file, :data:`OWNER_FILE`, naming its kind; before replacing or deleting a folder, vireid checks
that mark. A folder without it is the user's, and is refused with a :class:`~vireid.errors.StorageError`.

Atomic writes build the new folder under a hidden temporary name next to the target (``.<name>.tmp-XXXX``)
and rename it into place. Such a temporary folder carries :data:`TEMP_FILE` (the writer's pid and host)
from the moment it exists, so that a process killed in the middle leaves a folder that a later call can
recognise as an orphan of vireid's own and remove (:func:`clean_orphaned_temp_folders`); hidden folders
without that mark are never touched.

A run folder is locked for the whole run with ``flock`` on :data:`LOCK_FILE` (:class:`RunLock`), so two
``vireid train`` processes can never write into the same run.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import cast

from vireid.errors import RunInUseError, StorageError, describe_os_error

OWNER_FILE = ".vireid-folder"
"""Marker of a folder vireid created: JSON ``{"kind": ..., "created": ..., "vireid": ...}``."""
TEMP_FILE = ".vireid-temp"
"""Marker of an unfinished atomic write: JSON ``{"pid": ..., "host": ...}``."""
LOCK_FILE = ".vireid-lock"
"""Lock file of a run folder; while a run holds it, it names the holder (pid, host, start time)."""

_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.(?:tmp|old)-[^/]+$")


# ------------------------------------------------------------------------------------------ storage errors


def storage_error(exc: OSError, path: str | os.PathLike, action: str, fix: str | None = None) -> StorageError:
    """Turn an ``OSError`` raised while ``action`` (e.g. "write the checkpoint") into one clear line.

    A thin wrapper of :func:`vireid.errors.describe_os_error` (the single implementation): the reason comes
    from ``errno`` (disk full, read-only, permission, a file in the way), the path is the one the user knows
    (``path``), and ``fix`` (or the default for the errno) says what to do.
    """
    return cast(StorageError, describe_os_error(exc, path, StorageError, action=action, fix=fix))


def ensure_folder(path: str | os.PathLike, what: str) -> Path:
    """Create ``path`` (and its parents) if needed, or raise a :class:`StorageError` naming ``what``."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error(exc, path, f"create the {what}", _folder_fix(exc, what)) from None
    if not path.is_dir():  # pragma: no cover - mkdir(exist_ok) already refuses a file
        raise StorageError(f"{what} {path} is not a folder.", fix="choose another path.")
    return path


def _folder_fix(exc: OSError, what: str) -> str | None:
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        return f"a file stands where the {what} should be: choose another path."
    return None


# -------------------------------------------------------------------------------------------- ownership


def mark_folder(folder: str | os.PathLike, kind: str) -> None:
    """Write the ownership mark of ``kind`` into ``folder`` (which vireid has just created)."""
    from vireid import __version__

    payload = {"kind": kind, "created": _dt.datetime.now().isoformat(timespec="seconds"), "vireid": __version__}
    (Path(folder) / OWNER_FILE).write_text(json.dumps(payload) + "\n")


def folder_kind(folder: str | os.PathLike) -> str | None:
    """The kind vireid marked ``folder`` with, or ``None`` when it carries no (readable) mark."""
    try:
        data = json.loads((Path(folder) / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None
    kind = data.get("kind") if isinstance(data, dict) else None
    return kind if isinstance(kind, str) else None


def create_owned_folder(folder: str | os.PathLike, kind: str, what: str) -> bool:
    """Create ``folder`` marked as ``kind``; an existing folder is used as it is (and left unmarked when it
    was not vireid's). Returns whether vireid created it. Errors become a :class:`StorageError`."""
    folder = Path(folder)
    existed = folder.is_dir()
    ensure_folder(folder.parent, f"parent folder of the {what}")
    try:
        folder.mkdir(exist_ok=True)
        if not existed:
            mark_folder(folder, kind)
    except OSError as exc:
        raise storage_error(exc, folder, f"create the {what}", _folder_fix(exc, what)) from None
    return not existed


def check_replaceable(folder: str | os.PathLike, kind: str, known: set[str], what: str, fix: str) -> None:
    """Refuse (``StorageError``) to replace ``folder`` unless vireid marked it ``kind`` and it holds nothing but
    the ``known`` entries (plus vireid's marks): files a user added to it are never deleted either."""
    folder = Path(folder)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise StorageError(f"{folder} exists and is a file, not a {what}; refusing to overwrite it.", fix=fix)
    found = folder_kind(folder)
    if found != kind:
        mark = f"it is marked as a vireid {found}" if found else f"it has no {OWNER_FILE} mark"
        raise StorageError(
            f"{folder} exists and was not created by vireid as a {what} ({mark}); refusing to replace it.",
            fix=fix,
        )
    extra = sorted(p.name for p in folder.iterdir() if p.name not in known | {OWNER_FILE, TEMP_FILE})
    if extra:
        raise StorageError(
            f"{folder} is a vireid {what} but also holds other files ({', '.join(extra[:5])}); refusing to replace "
            "it, so that they are not lost.",
            fix=fix,
        )


def remove_owned_folder(folder: str | os.PathLike, kind: str, what: str, fix: str) -> None:
    """Delete ``folder`` only if vireid marked it ``kind``; otherwise raise a :class:`StorageError`."""
    folder = Path(folder)
    found = folder_kind(folder)
    if found != kind:
        mark = f"it is marked as a vireid {found}" if found else f"it has no {OWNER_FILE} mark"
        raise StorageError(f"{folder} was not created by vireid as a {what} ({mark}); refusing to delete it.", fix=fix)
    shutil.rmtree(folder)


# ----------------------------------------------------------------------------------- atomic temp folders


def make_temp_folder(target: str | os.PathLike, what: str) -> Path:
    """A marked temporary folder next to ``target`` (``.<name>.tmp-XXXX``), to be renamed into place with
    :func:`replace_folder` or removed with :func:`discard_temp_folder`."""
    target = Path(target)
    ensure_folder(target.parent, f"folder of the {what}")
    try:
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
        _write_temp_mark(tmp)
    except OSError as exc:
        raise storage_error(exc, target, f"write the {what}") from None
    return tmp


def _write_temp_mark(folder: Path) -> None:
    (folder / TEMP_FILE).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n")


def discard_temp_folder(tmp: str | os.PathLike) -> None:
    """Remove a temporary folder made by :func:`make_temp_folder` (only if it still carries its mark)."""
    tmp = Path(tmp)
    if (tmp / TEMP_FILE).is_file():
        shutil.rmtree(tmp, ignore_errors=True)


def replace_folder(tmp: Path, target: Path) -> None:
    """Rename the finished temporary folder ``tmp`` to ``target``.

    An existing ``target`` (the caller has checked that vireid may replace it) is first marked as a temporary
    and renamed aside, and removed only once the new folder is in place; if the swap fails, it is put back.
    """
    tmp, target = Path(tmp), Path(target)
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}-{tmp.name.rsplit('-', 1)[-1]}"
        _write_temp_mark(target)  # a stray mark inside a live folder is harmless: orphans are found by name
        os.replace(target, old)
        try:
            os.replace(tmp, target)
        except BaseException:
            os.replace(old, target)
            (target / TEMP_FILE).unlink(missing_ok=True)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
    (target / TEMP_FILE).unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def clean_orphaned_temp_folders(
    parent: str | os.PathLike, *, target_name: str | None = None, assume_orphaned: bool = False
) -> list[Path]:
    """Remove temporary folders that vireid's atomic writes left in ``parent`` when their process died.

    Only hidden folders named like vireid's temporaries (``.<name>.tmp-*``, ``.<name>.old-*``) that carry
    :data:`TEMP_FILE` are considered. One is an orphan when its writer (pid on this host) is gone, or always
    when ``assume_orphaned`` (the caller holds the run lock, so no other writer can be busy there).
    ``target_name`` limits cleaning to temporaries of one target. Returns the removed folders.
    """
    parent = Path(parent)
    if not parent.is_dir():
        return []
    removed = []
    host = socket.gethostname()
    for child in parent.iterdir():
        match = _TEMP_NAME.match(child.name)
        if not match or (target_name is not None and match["target"] != target_name) or not child.is_dir():
            continue
        try:
            mark = json.loads((child / TEMP_FILE).read_text())
        except (OSError, ValueError):
            continue  # not marked by vireid: never touched
        if not assume_orphaned:
            pid = int(mark.get("pid", -1)) if isinstance(mark, dict) else -1
            if mark.get("host") != host or pid == os.getpid() or _process_alive(pid):
                continue
        shutil.rmtree(child, ignore_errors=True)
        removed.append(child)
    return removed


# ------------------------------------------------------------------------------------ deterministic files


def canonicalize_safetensors_header(path: str | os.PathLike) -> None:
    """Rewrite the JSON header of a safetensors file in place with sorted keys.

    safetensors keeps its header in a hash map whose order changes from process to process (and from call
    to call), so the same tensors saved twice differ byte for byte. The sorted header has the same content
    and the same length (padded with spaces, as the format allows), so the tensor data does not move.
    """
    import struct

    with open(path, "r+b") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
        canonical = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        if len(canonical) > length:  # pragma: no cover - the same keys and values serialise to the same length
            raise ValueError(f"{path}: the sorted safetensors header is longer than the original")
        handle.seek(8)
        handle.write(canonical + b" " * (length - len(canonical)))


# ------------------------------------------------------------------------------------------------ run lock


class RunLock:
    """An exclusive ``flock`` on ``<run>/.vireid-lock``, held for the whole run.

    The lock belongs to the open file: it is released by :meth:`release`, and by the operating system when
    the process ends in any way (even ``kill -9``), so a crashed run never leaves a stale lock behind.
    The file's content names the holder for the error message of a second run.
    """

    def __init__(self, folder: Path, handle) -> None:
        self.folder = folder
        self._handle = handle

    @classmethod
    def acquire(cls, folder: str | os.PathLike) -> RunLock:
        """Lock ``folder`` or raise :class:`RunInUseError` naming the holder."""
        folder = Path(folder)
        path = folder / LOCK_FILE
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no flock; runs are not locked there
            return cls(folder, None)
        try:
            handle = open(path, "a+")  # noqa: SIM115 - kept open for the whole run; "a+" does not truncate
        except OSError as exc:
            raise storage_error(exc, folder, "lock the run folder") from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown process"
            handle.close()
            raise RunInUseError(
                f"run folder {folder} is in use by another vireid run ({holder}).",
                fix="wait for that run to finish, or choose another train.name / train.out_dir.",
            ) from None
        handle.seek(0)
        handle.truncate()
        started = _dt.datetime.now().isoformat(timespec="seconds")
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n")
        handle.flush()
        return cls(folder, handle)

    def release(self) -> None:
        """Unlock (idempotent)."""
        if self._handle is not None:
            self._handle.close()  # closing the file releases the flock
            self._handle = None

    @property
    def held(self) -> bool:
        return self._handle is not None
