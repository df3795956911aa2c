"""Error types that carry their cause and their fix.

vireid reports bad input (a missing folder, a malformed index line, a NaN loss, an unknown config key) as
one exception whose message names the offending file, line or key and says what to do about it. The CLI
prints that message alone, without a traceback, and exits non-zero. Library users catch the classes below.
"""

from __future__ import annotations

import re


class VireidError(Exception):
    """Base class of every error vireid raises on purpose.

    ``fix`` is an optional sentence telling the user what to do; it is appended to the message so that a
    single line read in a terminal or a log is enough to act on.
    """

    def __init__(self, message: str, *, fix: str | None = None):
        # torch re-raises an error from a DataLoader worker as ``type(exc)(text)`` where ``text`` is the
        # worker's whole formatted traceback; keep only the original one-line message.
        original = unwrap_worker_message(message) if fix is None and isinstance(message, str) else None
        if original is not None:
            message = original
        self.problem = message
        self.fix = fix
        super().__init__(message if not fix else f"{message} Fix: {fix}")


class ConfigError(VireidError, ValueError):
    """A configuration file, key, value or command-line override is wrong."""


class DataError(VireidError, ValueError):
    """A dataset folder, index file, annotation or image is missing, malformed or unreadable."""


class ProtocolError(VireidError, ValueError):
    """An evaluation protocol cannot be run as asked (wrong trial, empty gallery, mismatched inputs)."""


class CheckpointError(VireidError, RuntimeError):
    """A checkpoint is missing, incomplete, or does not fit the model or run it is loaded into."""


class TrainingError(VireidError, RuntimeError):
    """Training cannot continue (for example the loss became NaN or infinite)."""


class StorageError(VireidError, OSError):
    """A file or folder cannot be written, read or replaced: a read-only or full disk, a file where a folder is
    expected, or a folder vireid did not create and therefore will not delete.

    Also an :class:`OSError`, so code that already catches ``OSError`` around vireid calls keeps working.
    """


class RunInUseError(VireidError, RuntimeError):
    """Another process holds the lock of a run folder (two ``vireid train`` runs into one folder)."""


class MissingDependencyError(VireidError, ImportError):
    """An optional extra (faiss, onnx, open_clip, transformers) is needed but not installed."""

    def __init__(self, package: str, extra: str, purpose: str):
        super().__init__(
            f"{purpose} needs the optional package '{package}', which is not installed.",
            fix=f"pip install 'vireid[{extra}]' (or: pip install {package}).",
        )


class WeightsNotFoundError(VireidError, FileNotFoundError):
    """Pretrained weights were asked for but no local copy exists (vireid never downloads at run time)."""


def require(package: str, extra: str, purpose: str):
    """Import an optional package lazily, or raise :class:`MissingDependencyError` naming the extra.

    Used for faiss, onnx/onnxruntime, open_clip and transformers so that ``import vireid`` never pays for
    (or fails on) heavy optional dependencies.
    """
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError as exc:  # pragma: no cover - exercised through the callers' tests
        raise MissingDependencyError(package.split(".")[0], extra, purpose) from exc


# errno -> (what happened, what to do), for file-system errors reported as one line. The fixes fit both a
# read and a write; a caller that knows better passes its own ``fix``.
_OS_ERROR_ADVICE: dict[str, tuple[str, str]] = {
    "ENOENT": ("does not exist", "check the path."),
    "EACCES": ("cannot be accessed (permission denied)", "check its permissions or choose another path."),
    "EPERM": ("cannot be accessed (operation not permitted)", "check its permissions or choose another path."),
    "ELOOP": ("is a symbolic link that loops back on itself", "remove or repair the link."),
    "ENOSPC": (
        "cannot be written: the disk is full",
        "free disk space (or point the output to another disk) and run the command again.",
    ),
    "EDQUOT": (
        "cannot be written: the disk quota is exceeded",
        "free disk space (or point the output to another disk) and run the command again.",
    ),
    "EROFS": ("is on a read-only file system", "choose a writable location."),
    "EISDIR": ("is a folder where a file was expected", "give the path of a file."),
    "ENOTDIR": (
        "has a part that is a file where a folder was expected",
        "a file stands where a folder is needed: check the path or choose another one.",
    ),
    "EEXIST": ("already exists", "a file stands where a folder is needed: choose another output path."),
    "ENAMETOOLONG": ("has a name that is too long", "use a shorter path."),
    "EMFILE": ("cannot be opened: too many open files", "raise the open-file limit (ulimit -n) or use fewer workers."),
    "EIO": ("cannot be read or written (input/output error)", "check the disk or copy the file again."),
}


def describe_os_error(
    exc: OSError,
    path: object = None,
    cls: type[VireidError] = VireidError,
    *,
    action: str | None = None,
    fix: str | None = None,
) -> VireidError:
    """A :class:`VireidError` for a file-system error: one line naming the file, the cause and the fix.

    The one place where an ``OSError`` becomes a message (:func:`vireid.files.storage_error` calls it for
    writes), so that a user reads ``/data/x.jpg is a symbolic link that loops back on itself. Fix: remove or
    repair the link.`` rather than a traceback. ``path`` defaults to the file named by the error itself.
    ``action`` (e.g. "write the checkpoint") names what vireid was doing: the message then reads ``cannot
    write the checkpoint PATH: REASON.``. ``fix`` replaces the default fix of the error's ``errno``.
    """
    import errno as errno_names

    name = errno_names.errorcode.get(exc.errno or -1, "")
    target = path if path is not None else exc.filename
    if exc.filename2 is not None and path is None:
        target = f"{exc.filename} -> {exc.filename2}"
    where = str(target) if target is not None else "a file"
    reason = exc.strerror or str(exc)
    what, errno_fix = _OS_ERROR_ADVICE.get(name, (None, None))
    if action is not None:
        message = f"cannot {action} {where}: {reason}."
        generic_fix = "check the path and that the disk is writable, then run the command again."
    elif what is not None:
        message = f"{where} {what} ({reason})."
        generic_fix = "check the path, its permissions and the disk."
    else:
        message = f"{where}: {reason}."
        generic_fix = "check the path, its permissions and the disk."
    return cls(message, fix=fix or errno_fix or generic_fix)


_WORKER_HEADER = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*: (.*)$")


def unwrap_worker_message(text: str) -> str | None:
    """The original message inside torch's ``Caught X in DataLoader worker process N`` wrapper, else None.

    torch cannot send an exception object back from a worker process, so it sends the formatted traceback
    and raises ``type(exc)(traceback_text)`` in the main process: a 25-line message whose last line is the
    one that matters (``vireid.errors.DataError: image ... Fix: ...``).
    """
    if not _WORKER_HEADER.match(text):
        return None
    for line in reversed(text.rstrip().splitlines()):
        match = _EXCEPTION_LINE.match(line)
        if match:
            return match.group(1)
    return None
