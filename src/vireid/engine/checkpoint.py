"""Checkpoints: weights in safetensors, a JSON sidecar, and a resumable trainer state.

A checkpoint is a folder::

    model.safetensors   the model's state dict (tensors only; no pickled modules)
    meta.json           config, method, epoch, iteration, metrics, selection split, dataset, trial, version
    trainer_state.pt    optimiser, scheduler, AMP scaler, RNG states, sampler position
                        (plain tensors and Python primitives: loadable with ``torch.load(weights_only=True)``)

Writes are atomic: the folder is written under a marked temporary name (:mod:`vireid.files`) and renamed
into place, and the ``last.json`` / ``best.json`` pointers are replaced with ``os.replace``. A crash or a full
disk while writing leaves the previous checkpoint and pointers intact, and a temporary folder left by a
killed process is recognised by its mark and removed by the next run (:func:`vireid.files.clean_orphaned_temp_folders`).
A checkpoint never holds a non-finite parameter or buffer: :func:`save_checkpoint` refuses one.

``model.safetensors`` is written deterministically (its JSON header with sorted keys), so the same weights
give the same bytes in every process.
"""

from __future__ import annotations

import errno
import json
import math
import os
import random
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vireid.errors import CheckpointError, StorageError
from vireid.files import (
    canonicalize_safetensors_header,
    discard_temp_folder,
    make_temp_folder,
    replace_folder,
    storage_error,
)

MODEL_FILE = "model.safetensors"
META_FILE = "meta.json"
STATE_FILE = "trainer_state.pt"


@dataclass
class LoadedCheckpoint:
    path: Path
    meta: dict[str, Any]
    state_dict: dict[str, torch.Tensor]


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and ``os.replace``.

    An ``OSError`` (full disk, read-only folder) becomes a :class:`~vireid.errors.StorageError` naming
    ``path``; the previous content of ``path`` is untouched.
    """
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise storage_error(exc, path, "write") from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def rng_state() -> dict[str, Any]:
    """All global RNG states as tensors and primitives (``weights_only``-loadable)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def nonfinite_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors of ``state`` that hold a NaN or an infinity.

    Called after every optimiser step, so it is a cheap screen first: a tensor's sum (accumulated in at
    least fp32) is NaN/inf whenever one of its values is; only tensors whose sum is not finite are checked
    element by element (a finite tensor whose sum overflows is thus not reported). One device sync in all.
    """
    names = [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and v.numel()]
    if not names:
        return []
    with torch.no_grad():
        sums = torch.stack(
            [state[k].sum(dtype=torch.float64 if state[k].dtype == torch.float64 else torch.float32) for k in names]
        )
        suspects = [k for k, total in zip(names, sums.cpu().tolist()) if not math.isfinite(total)]
        return [k for k in suspects if not bool(torch.isfinite(state[k]).all())]


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write a safetensors file whose bytes depend only on the tensors and metadata.

    safetensors keeps its header in a hash map whose order changes from process to process, so the same
    weights saved twice would differ byte for byte. The header is re-written here with sorted keys (same
    content, same length: the tensor data and offsets do not move).
    """
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    canonicalize_safetensors_header(path)


def save_checkpoint(
    folder: Path,
    *,
    model_state: dict[str, torch.Tensor],
    meta: dict[str, Any],
    trainer_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder atomically and return its path.

    ``folder`` must not exist yet unless it is being replaced as a whole (the old folder is removed only
    after the new one is complete). Refuses (:class:`CheckpointError`) weights with NaN or infinite values,
    so no checkpoint ever holds them; a failed write (full disk, read-only folder) raises a
    :class:`~vireid.errors.StorageError` and leaves the previous checkpoint as it was.
    """
    folder = Path(folder)
    bad = nonfinite_tensors(model_state)
    if bad:
        raise CheckpointError(
            f"refusing to write checkpoint {folder}: {len(bad)} parameters or buffers hold NaN or infinite values "
            f"({', '.join(bad[:4])}).",
            fix="lower optim.lr or set train.grad_clip; the previous checkpoint is kept.",
        )
    tmp = make_temp_folder(folder, "checkpoint")
    try:
        # safetensors refuses shared storage and non-contiguous tensors: store plain contiguous copies.
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model_state.items()}
        save_tensors(tensors, tmp / MODEL_FILE, metadata={"format": "pt", "vireid": "1"})
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=_json_default))
        if trainer_state is not None:
            torch.save(trainer_state, tmp / STATE_FILE)
        for child in tmp.iterdir():
            with open(child, "rb") as handle:
                os.fsync(handle.fileno())
        replace_folder(tmp, folder)
    except OSError as exc:
        discard_temp_folder(tmp)
        if isinstance(exc, StorageError):
            raise
        raise storage_error(exc, folder, "write the checkpoint", fix=_write_fix(exc, folder.parent)) from None
    except BaseException:
        discard_temp_folder(tmp)
        raise
    return folder


def _write_fix(exc: OSError, where: Path) -> str:
    first = "free disk space" if exc.errno == errno.ENOSPC else "make the folder writable"
    return f"{first} and resume the run; the previous checkpoint in {where} (if any) is intact."


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray | torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} into a checkpoint sidecar")


def read_pointer(pointer: Path) -> str:
    """The checkpoint folder name a ``last.json`` / ``best.json`` pointer names (a clear error if it is junk)."""
    try:
        name = json.loads(pointer.read_text())["folder"]
        if not isinstance(name, str) or not name or name != Path(name).name or name.startswith("."):
            raise ValueError(f"bad folder name {name!r}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"checkpoint pointer {pointer} is unreadable or malformed ({type(exc).__name__}: {exc}).",
            fix=f'it must read {{"folder": "<checkpoint folder>"}}; restore it, or pass a checkpoint folder under '
            f"{pointer.parent} directly.",
        ) from None
    return name


def resolve_checkpoint(path: str | Path, prefer: str = "best") -> Path:
    """Accept a checkpoint folder, a ``checkpoints/`` folder or a run folder and return a checkpoint folder.

    For a run folder the pointer ``prefer`` decides: ``best`` (``best.json``) or ``last`` (``last.json``).
    There is no silent fallback: a run without the preferred checkpoint, or whose pointer names a missing
    folder, is refused with the file that is missing (using the last checkpoint instead of a best one that
    went missing would export or test another model than the user asked for).
    """
    path = Path(path)
    if (path / MODEL_FILE).is_file():
        return path
    if prefer not in ("best", "last"):
        raise ValueError(f"prefer={prefer!r} is not 'best' or 'last'")
    for base in (path / "checkpoints", path):
        pointer = base / f"{prefer}.json"
        other = base / ("last.json" if prefer == "best" else "best.json")
        if pointer.is_file():
            target = base / read_pointer(pointer)
            if not (target / MODEL_FILE).is_file():
                raise CheckpointError(
                    f"{target / MODEL_FILE} is missing, but {pointer} points to it; refusing to use another "
                    "checkpoint in its place.",
                    fix=f"restore {target}, or pass the checkpoint folder you want explicitly.",
                )
            return target
        if other.is_file():
            if prefer == "best":
                raise CheckpointError(
                    f"run {base.parent if base.name == 'checkpoints' else base} has no best checkpoint ({pointer} "
                    "is missing: the run did not finish, or its best checkpoint was removed); refusing to use the "
                    "last checkpoint in its place.",
                    fix=f"finish the run with `vireid train ... --resume`, or pass the last checkpoint "
                    f"({base / read_pointer(other)}) explicitly.",
                )
            raise CheckpointError(
                f"{pointer} is missing, so {base} has no resumable checkpoint.",
                fix="pass a checkpoint folder explicitly.",
            )
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist.", fix="pass a run folder or a checkpoint folder.")
    raise CheckpointError(
        f"{path} holds no checkpoint (no {MODEL_FILE}, and no best.json/last.json pointer).",
        fix="pass a run folder written by `vireid train` or one of its checkpoints/ sub-folders.",
    )


_CORRUPT_FIX = (
    "the file is truncated or corrupt (an interrupted copy or write?): restore it, or use another checkpoint "
    "of the run (checkpoints/s*)."
)


def load_checkpoint(path: str | Path, prefer: str = "best") -> LoadedCheckpoint:
    """Read weights and sidecar of a checkpoint (see :func:`resolve_checkpoint` for accepted paths)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = resolve_checkpoint(path, prefer=prefer)
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{folder} has weights but no {META_FILE}; the checkpoint is incomplete.")
    try:
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint sidecar {meta_path} is unreadable ({exc}).", fix=_CORRUPT_FIX) from None
    try:
        state = load_file(str(folder / MODEL_FILE))
    except (OSError, ValueError, SafetensorError) as exc:
        raise CheckpointError(
            f"checkpoint weights {folder / MODEL_FILE} are unreadable ({exc}).", fix=_CORRUPT_FIX
        ) from None
    return LoadedCheckpoint(path=folder, meta=meta, state_dict=state)


def load_trainer_state(folder: str | Path) -> dict[str, Any]:
    """Load ``trainer_state.pt`` with ``weights_only=True`` (no arbitrary code execution on load).

    A file that holds anything but plain tensors and primitives is refused by ``torch.load`` without running
    any of its code; that, and a truncated file, end in one :class:`CheckpointError` naming the file.
    """
    import pickle

    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{folder} has no {STATE_FILE}, so training cannot resume from it (best checkpoints keep weights only).",
            fix="resume from the run folder, which uses the last checkpoint.",
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"trainer state {path} holds more than plain tensors and was refused without running it ({first}).",
            fix="only resume from checkpoints written by vireid; " + _CORRUPT_FIX,
        ) from None
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"trainer state {path} is unreadable ({first}).", fix=_CORRUPT_FIX) from None


class CheckpointManager:
    """Writes numbered checkpoints into ``<run>/checkpoints`` and keeps ``last.json``/``best.json`` pointers."""

    def __init__(self, run_dir: Path, keep_last: int = 2):
        self.dir = Path(run_dir) / "checkpoints"
        self.keep_last = max(1, keep_last)

    def save(self, name: str, *, model_state, meta, trainer_state=None, best: bool = False) -> Path:
        folder = save_checkpoint(self.dir / name, model_state=model_state, meta=meta, trainer_state=trainer_state)
        if trainer_state is not None:
            atomic_write_text(self.dir / "last.json", json.dumps({"folder": name}))
        if best:
            save_checkpoint(self.dir / "best", model_state=model_state, meta=meta, trainer_state=None)
            atomic_write_text(self.dir / "best.json", json.dumps({"folder": "best"}))
        self._prune()
        return folder

    def last(self) -> Path | None:
        pointer = self.dir / "last.json"
        if not pointer.is_file():
            return None
        return self.dir / read_pointer(pointer)

    def _prune(self) -> None:
        last = self.last()
        # Only numbered checkpoint folders written by save() are ever pruned.
        numbered = sorted(p for p in self.dir.glob("s*") if p.is_dir() and re.fullmatch(r"s\d{8}", p.name))
        stale = [p for p in numbered if p != last][: max(0, len(numbered) - self.keep_last)]
        for folder in stale:
            shutil.rmtree(folder, ignore_errors=True)
