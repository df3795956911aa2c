"""Reading released checkpoint files without executing a pickle.

The authors' releases save ``torch.save({'net': state_dict, 'cmc': ndarray, 'mAP': np.float64, ...})``.
``torch.load(weights_only=True)`` refuses those files because the stored metrics are NumPy objects, and the
usual workaround, ``weights_only=False``, runs whatever the pickle names: a downloaded ``.t`` file could
create files, start processes or read secrets. vireid instead keeps ``weights_only=True`` and allow-lists
exactly the NumPy globals that rebuild an array or a scalar (:data:`NUMPY_GLOBALS`). Anything else the
file names (``builtins.open``, ``os.system``, a class of the release's code) is refused before loading,
with one line naming the global.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vireid.errors import CheckpointError


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint file names a Python global that loading would call; vireid refuses to execute it."""


def _numpy_globals() -> list[Any]:
    """The NumPy objects that rebuild arrays and scalars, under the names NumPy 1.x and 2.x write.

    NumPy 2 moved ``numpy.core`` to ``numpy._core``; files written by the releases (NumPy 1.x) name
    ``numpy.core.multiarray._reconstruct``, files written today ``numpy._core.multiarray._reconstruct``. Both
    names are allowed for the same two functions. The dtype classes (``numpy.dtypes.Float64DType`` ...) are
    what NumPy >= 1.25 may pickle for a dtype.
    """
    multiarray = getattr(np, "_core", None) or np.core  # NumPy 2 / NumPy 1
    multiarray = multiarray.multiarray
    entries: list[Any] = [np.ndarray, np.dtype]
    for name in ("_reconstruct", "scalar"):
        function = getattr(multiarray, name)
        entries.append(function)
        entries.append((function, f"numpy.core.multiarray.{name}"))
        entries.append((function, f"numpy._core.multiarray.{name}"))
    for code in ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"):
        entries.append(type(np.dtype(code)))
    return entries


NUMPY_GLOBALS: list[Any] = _numpy_globals()
"""Globals allowed while loading a release file (``torch.serialization.safe_globals``)."""


def _allowed_names() -> set[str]:
    names = set()
    for entry in NUMPY_GLOBALS:
        if isinstance(entry, tuple):
            names.add(entry[1])
        else:
            names.add(f"{entry.__module__}.{entry.__qualname__}")
    return names


def unsafe_globals(path: str | Path) -> list[str]:
    """Globals named by the pickle of ``path`` that neither torch's weights-only loader nor vireid allows.

    Reads the pickle opcodes only (``torch.serialization.get_unsafe_globals_in_checkpoint``); nothing runs.
    """
    found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    allowed = _allowed_names()
    return [name for name in found if name not in allowed]


def read_release_file(path: str | Path) -> Any:
    """Load a ``torch.save`` file with ``weights_only=True`` and the NumPy allow-list; refuse anything else.

    Returns whatever the file holds (a dict of tensors, NumPy arrays and plain Python values). Raises
    :class:`UnsafeCheckpointError` naming the first refused global, and :class:`CheckpointError` for a
    missing, truncated or non-PyTorch file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"release checkpoint {path} does not exist.", fix="give the path of the .t/.pth file.")
    serialization = torch.serialization
    if not hasattr(serialization, "safe_globals") or not hasattr(serialization, "get_unsafe_globals_in_checkpoint"):
        # Older torch has no allow-list for the weights-only loader; vireid will not fall back to pickle.
        raise CheckpointError(
            f"reading {path} safely needs torch >= 2.5 (weights-only loading with an allow-list); this is torch "
            f"{torch.__version__}.",
            fix="upgrade torch (pip install 'torch>=2.5'), or convert on a machine that has it.",
        )
    try:
        refused = unsafe_globals(path) if zipfile.is_zipfile(path) else []
    except (RuntimeError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {_first_line(exc)}") from None
    if refused:
        raise _refusal(path, refused[0], len(refused))
    try:
        with torch.serialization.safe_globals(NUMPY_GLOBALS):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # Legacy (non-zip) files are only checked here, by the weights-only unpickler itself.
        name = _global_in_message(str(exc))
        raise _refusal(path, name or _first_line(exc), 1) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {_first_line(exc)}") from None


def _refusal(path: Path, name: str, count: int) -> UnsafeCheckpointError:
    more = f" (and {count - 1} more)" if count > 1 else ""
    return UnsafeCheckpointError(
        f"{path} names the Python global '{name}'{more}, which loading would execute; vireid reads only tensors, "
        "NumPy arrays/scalars and plain Python values.",
        fix="use the release's original checkpoint file; never load this one with weights_only=False.",
    )


def _global_in_message(message: str) -> str | None:
    """The global named in torch's weights-only refusal ("Unsupported global: GLOBAL builtins.open ...")."""
    marker = "GLOBAL "
    if marker in message:
        return message.split(marker, 1)[1].split()[0]
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
