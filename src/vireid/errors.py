"""Error types that carry their cause and their fix.

vireid reports bad input (a missing folder, a malformed index line, a NaN loss, an unknown config key) as
one exception whose message names the offending file, line or key and says what to do about it. The CLI
prints that message alone, without a traceback, and exits non-zero. Library users catch the classes below.
"""

from __future__ import annotations


class VireidError(Exception):
    """Base class of every error vireid raises on purpose.

    ``fix`` is an optional sentence telling the user what to do; it is appended to the message so that a
    single line read in a terminal or a log is enough to act on.
    """

    def __init__(self, message: str, *, fix: str | None = None):
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
